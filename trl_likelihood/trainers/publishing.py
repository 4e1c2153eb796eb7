"""Nothing secret or local in what a trainer here saves for the Hub.

transformers pickles the whole ``TrainingArguments`` (``hub_token`` and ``output_dir`` included) into
``training_args.bin`` next to every save and uploads it with the model; PEFT writes the base model's local path into
``adapter_config.json``. Both would reach the Hub as they are.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from .. import _compat
from ..cards import public_model_name
from ..paths import is_local_path

# Names of settings that carry credentials, at any depth of the training arguments (``hub_token``, a ``token`` in
# ``model_init_kwargs`` to load a gated model, an ``api_key``...): ``torch.save(args)`` would publish them with the
# model. Token-valued names such as SFT's ``eos_token``/``pad_token`` are not credentials and stay.
SECRET_NAME = re.compile(r"^(hub_|hf_|access_|auth_|use_auth_)?token$|api_?key|secret|password|credential", re.I)
HF_TOKEN_VALUE = re.compile(r"^hf_[A-Za-z0-9]{20,}$")  # a Hugging Face token under any name


def public_value(value: Any) -> Any:
    """``value`` fit to publish: credentials (by name, in nested dicts and lists, or a token-shaped string) set to
    ``None``, absolute paths cut to their last component."""
    if isinstance(value, dict):
        return {k: None if isinstance(k, str) and SECRET_NAME.search(k) else public_value(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(public_value(v) for v in value)
    if isinstance(value, str):
        if HF_TOKEN_VALUE.match(value):
            return None
        if os.path.isabs(value) or value.startswith("~"):
            return public_model_name(value)
    return value


def public_training_args(args: Any) -> Any:
    """A copy of ``args`` fit to publish: every credential field (``hub_token``, tokens inside ``model_init_kwargs``
    and any nested dict) set to ``None``, absolute paths cut to their last component."""
    state = public_value(dict(vars(args)))
    cls = type(args)
    public = object.__new__(getattr(cls, "_public_class", cls))
    public.__dict__.update(state)
    return public


class _PicklesPublic:
    """Mixed into the class of the live arguments while transformers saves them: attributes are unchanged (the upload
    still receives the token), but pickling, which is what ``training_args.bin`` is, writes the public copy."""

    _public_class: type

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Protocol 1's reduce rebuilds the public class from its state; protocol 2's ``__newobj__`` would be refused
        # by the pickler because its class is not this object's type. Loading needs nothing from this module.
        return public_training_args(self).__reduce_ex__(1)


@functools.cache
def _pickles_public(cls: type) -> type:
    if issubclass(cls, _PicklesPublic):
        return cls
    namespace = {"_public_class": cls, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (_PicklesPublic, cls), namespace)


class PublicSaves:
    """Saves write the public copy of the arguments; pushes upload a public copy of the folder."""

    @contextlib.contextmanager
    def _args_pickled_public(self) -> Iterator[None]:
        """Make ``torch.save(self.args)`` write the public copy for the duration; the object itself is unchanged."""
        args, original = self.args, type(self.args)
        args.__class__ = _pickles_public(original)
        try:
            yield
        finally:
            args.__class__ = original

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with self._args_pickled_public():
            super()._save(output_dir, state_dict)

    def _publish_adapter_configs(self, folder: str) -> None:
        """In the copy of ``folder`` that is uploaded, replace a local ``base_model_name_or_path`` by the folder's
        name, as the card's ``base_model`` does; the local folder keeps its path and loads as it is."""
        for path in glob.glob(os.path.join(folder, "**", "adapter_config.json"), recursive=True):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            base = config.get("base_model_name_or_path")
            if base and is_local_path(base):
                config["base_model_name_or_path"] = public_model_name(base)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(json.dumps(config, indent=2, sort_keys=True))  # PEFT's own layout

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # It re-saves training_args.bin into output_dir before uploading it.
        with self._args_pickled_public(), _compat.uploads_staged(self._publish_adapter_configs):
            super()._push_from_checkpoint(checkpoint_folder)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``push_to_hub``; what it uploads is the public form of the folder (see ``_save`` and
        ``_publish_adapter_configs``)."""
        with _compat.uploads_staged(self._publish_adapter_configs):
            return super().push_to_hub(*args, **kwargs)
