"""The method's settings, saved as ``method_settings.json`` next to every model a trainer saves (checkpoints, the
final folder, pushes), so that what is loaded later knows how it was trained: a resume warns on changed settings, and
``ImplicitPRM.from_pretrained`` scores with the ``beta`` the rewards were trained with."""

from __future__ import annotations

import json
import os
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

SETTINGS_FILE = "method_settings.json"


def write_method_settings(folder: str, settings: dict[str, Any]) -> None:
    with open(os.path.join(folder, SETTINGS_FILE), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, sort_keys=True)


def read_method_settings(name_or_path: str | os.PathLike) -> dict[str, Any] | None:
    """The settings saved with a model in a local folder or a Hub repo; ``None`` where there are none (a model not
    trained here, an older save, or a Hub repo that cannot be reached)."""
    path = os.path.join(os.path.expanduser(str(name_or_path)), SETTINGS_FILE)
    if not os.path.isfile(path):
        if os.path.isdir(os.path.expanduser(str(name_or_path))):
            return None
        try:
            path = hf_hub_download(str(name_or_path), SETTINGS_FILE)
        except (OSError, EntryNotFoundError, ValueError):  # not found, offline, or not a repo id
            return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
