"""Checks every trainer here runs on its arguments before anything is built, naming the field and what it must be."""

from __future__ import annotations

import math
import os
from typing import Any

from ..paths import looks_local


def check_model_path(model: Any) -> None:
    """A model path meant to be local (``paths.looks_local``) that does not exist is named here: transformers would
    take it for a Hub id and fail with a repo-id or "couldn't connect to huggingface.co" error instead."""
    if isinstance(model, str) and looks_local(model) and not os.path.exists(os.path.expanduser(model)):
        raise FileNotFoundError(
            f"Model {model!r} does not exist (resolved to {os.path.abspath(os.path.expanduser(model))!r}); expected "
            "a local model folder or a Hub model id like 'Qwen/Qwen2-0.5B'."
        )


def resolve_args(trainer_name: str, model: Any, args: Any, config_class: type, kwargs: dict[str, Any]) -> Any:
    """TRL's default ``args`` (``<model name>-<method>`` as output dir) and the checks every trainer here shares."""
    check_model_path(model)
    if args is None:
        name = model if isinstance(model, str) else model.config._name_or_path
        args = config_class(f"{str(name).split('/')[-1]}-{config_class.__name__.removesuffix('Config')}")
    if not isinstance(args, config_class):
        raise TypeError(f"`args` must be a {config_class.__name__}, got {type(args).__name__}.")
    if kwargs.get("compute_loss_func") is not None:
        raise ValueError(f"{trainer_name} defines its own loss; `compute_loss_func` cannot be combined with it.")
    return args


def check_config_fields(
    config: Any,
    numbers: tuple[tuple[str, Any, str], ...] = (),
    integers: tuple[tuple[str, int], ...] = (),
    choices: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> None:
    """Refuse bad method fields when the config is built, naming the field and what it must be.

    ``numbers``: ``(name, predicate, "a number in ...")`` (bools refused); ``integers``: ``(name, lowest)``, ``None``
    allowed for optional fields; ``choices``: ``(name, allowed strings)``.
    """
    for name, ok, expected in numbers:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"`{name}` must be {expected}, got {value!r}.")  # inf and nan too
    for name, low in integers:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    for name, allowed in choices:
        if getattr(config, name) not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(config, name)!r}.")


def check_sft_loss_fields(config: Any, method: str, whole_sequences: str | None = None) -> None:
    """Refuse SFT fields a method's own loss would silently ignore: ``loss_type`` (the method replaces SFT's loss) and,
    when ``whole_sequences`` says why the method needs unpacked rows, ``packing``/``padding_free``."""
    if whole_sequences and (config.packing or config.padding_free):
        raise ValueError(f"{method} {whole_sequences}: set `packing=False` and `padding_free=False`.")
    if config.loss_type != "nll":
        raise ValueError(f"{method} replaces SFT's loss; leave `loss_type='nll'`, got {config.loss_type!r}.")
