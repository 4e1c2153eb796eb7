"""Local path or Hub id: the one rule for a model or dataset name, so that a path that does not exist is named as a
missing path (not tried on the Hub), and nothing local is written into a card or an upload."""

from __future__ import annotations

import os


def looks_local(name_or_path: str) -> bool:
    """A path meant to be on this machine, whether or not it exists: absolute, from ``.`` or ``~``, with a backslash,
    or with more than one ``/`` (a Hub model id is ``name`` or ``owner/name``)."""
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or "\\" in name_or_path
        or name_or_path.count("/") > 1
    )


def is_local_path(name_or_path: str) -> bool:
    """True for a path on this machine (one that looks local, or exists), false for a Hub id."""
    return looks_local(name_or_path) or os.path.exists(os.path.expanduser(name_or_path))
