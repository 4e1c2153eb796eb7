"""What every trl-likelihood trainer adds on top of its TRL parent: a right model card in every folder it saves a model
to, nothing secret or local in the files it saves for the Hub, and a stop before a non-finite loss reaches the weights.

transformers pickles the whole ``TrainingArguments`` (``hub_token`` and ``output_dir`` included) into
``training_args.bin`` next to every save and uploads it with the model; PEFT writes the base model's local path into
``adapter_config.json``. Both would reach the Hub as they are.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Hashable, Iterator
from typing import Any

import torch
from accelerate.logging import get_logger

from .. import _compat
from ..cards import CardInfo, is_local_path, looks_local, public_model_name, render_card
from ..method_settings import write_method_settings
from .checkpoints import CompleteCheckpoints

logger = get_logger(__name__)

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


class FiniteLossGuard:
    """Stop training at the first non-finite loss or gradient, before the optimizer step that would write NaN into
    the weights.

    ``Trainer`` runs the optimizer after the micro-batches' ``training_step``s; raising here leaves the weights, the
    optimizer state and every checkpoint already written as they were, and no later checkpoint is written. Under DDP
    the loss flag is reduced over the processes: a NaN on one rank poisons the averaged gradient of every rank, so all
    of them stop, at the same step, rather than one stopping and the others waiting for it. The gradients are checked
    once per optimizer step, after the last micro-batch's backward (so after DDP's all-reduce: every rank sees the
    same gradients): a finite loss can still have a NaN gradient (an ``inf * 0`` in a backward pass, fp16 overflow).
    """

    stop_on_nonfinite_loss: bool = True

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.stop_on_nonfinite_loss:
            finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
            if self.accelerator.num_processes > 1:
                finite = self.accelerator.reduce(finite, reduction="sum") / self.accelerator.num_processes
            if finite.item() < 1:  # a host sync, as transformers' own NaN/inf logging filter makes every step
                raise FloatingPointError(nonfinite_loss_message(loss, self.state.global_step))
            if self.accelerator.sync_gradients and not gradients_are_finite(model):
                raise FloatingPointError(nonfinite_loss_message(None, self.state.global_step))
        return loss


def gradients_are_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient held in ``.grad`` is finite (one norm over them all; engines such as DeepSpeed that keep
    gradients elsewhere are not checked here)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)))


def nonfinite_loss_message(loss: torch.Tensor | None, global_step: int) -> str:
    """The error: which step, what was kept, and where to look (``loss=None``: the loss was finite, a gradient not)."""
    if loss is None:
        what = "Non-finite gradient (the loss was finite)"
    else:
        value = loss.detach().float().mean().item()
        what = f"Non-finite training loss ({value} on this process, or non-finite on another)"
    return (
        f"{what} at global step {global_step + 1}: training stopped before its optimizer step, so the weights are "
        f"those of step {global_step} and no checkpoint after step {global_step} was written. Look for a too large "
        "learning rate or beta, fp16 overflow, or corrupt rows in that step's batch."
    )


class NonEmptyPreparedData:
    """After SFT's preparation, say how many rows each split lost and refuse one that has no row left, before any
    training.

    SFT drops the rows that truncation to ``max_length`` leaves without a scored token (a prompt that fills it)
    without a word; when that is every row, ``Trainer`` would only fail at ``train()`` with torch's "num_samples=0".
    The count is logged per split and kept in ``dropped_rows`` (not for packed or streamed data, whose rows are not
    counted).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = _named_splits(kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        super().__init__(*args, **kwargs)
        self.dropped_rows: dict[str, int] = {}
        for where, dataset in _named_splits(self.train_dataset, self.eval_dataset).items():
            if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
                raise ValueError(
                    f"{where} has no usable rows after preparation: every row lost its scored tokens (empty "
                    f"completion, or a prompt at least `max_length`={self.args.max_length} tokens long, so the "
                    "completion was truncated away). Raise `max_length` or shorten the prompts."
                )
            before = given.get(where)
            packed = getattr(self.args, "packing", False)  # configs without SFT's `packing` never pack
            if packed or not (hasattr(before, "__len__") and hasattr(dataset, "__len__")):
                continue
            self.dropped_rows[where] = len(before) - len(dataset)
            if self.dropped_rows[where] > 0:
                logger.warning(
                    "%s: %d of %d rows dropped in preparation: truncated to `max_length`=%s they kept no scored "
                    "token (a prompt at least that long, or an empty completion). Raise `max_length` or shorten "
                    "the prompts.",
                    where,
                    self.dropped_rows[where],
                    len(before),
                    self.args.max_length,
                )


def _named_splits(train_dataset: Any, eval_dataset: Any) -> dict[str, Any]:
    evals = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
    named = {f"eval_dataset[{k!r}]" if k else "eval_dataset": v for k, v in evals.items()}
    return {"train_dataset": train_dataset, **named}


class FreshEvaluationMetrics:
    """Each ``evaluate()`` and ``predict()`` starts from empty evaluation metrics. The accumulators are emptied when
    ``log()`` reports them, and ``predict()`` never logs: its rows would otherwise be averaged into the next
    evaluation's metrics. Trainers with accumulators of their own extend ``reset_metrics``."""

    def reset_metrics(self, mode: str) -> None:
        _compat.metrics_store(self, mode).clear()

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self.reset_metrics("eval")
        return super().evaluation_loop(*args, **kwargs)


class CardMixin(CompleteCheckpoints, FreshEvaluationMetrics, NonEmptyPreparedData, FiniteLossGuard):
    """Mix in before a TRL trainer; it brings ``NonEmptyPreparedData`` and ``FiniteLossGuard`` along. Subclasses set
    ``_card_template`` and return their ``card_hyperparameters``.

    TRL writes its generic card only on checkpoints and pushes, and PEFT's own card carries the base model's local
    path; here every folder ``_save`` writes (``save_model()``, checkpoints, pushes) gets the method's card.
    """

    _card_template: str = ""
    _card_pipeline_tag: str | None = "text-generation"

    def card_hyperparameters(self) -> dict[str, Any]:
        """The method's own settings, shown first in the card's hyperparameter table."""
        return {}

    def card_extra(self, info: CardInfo) -> dict[str, Any]:
        """Method-specific facts for the template (``info.extra``), e.g. which reference a PRM must be used with."""
        return {}

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, output_dir: str | None = None, **kwargs
    ) -> None:
        """Write ``README.md`` into ``output_dir`` (default ``args.output_dir``) from the method's template."""
        if not self.is_world_process_zero():
            return
        info = CardInfo.from_trainer(self, model_name=model_name, dataset_name=dataset_name, tags=kwargs.get("tags"))
        info.hyperparameters = {**self.card_hyperparameters(), **info.hyperparameters}
        info.extra = self.card_extra(info)
        info.pipeline_tag = self._card_pipeline_tag
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        render_card(self._card_template, info).save(os.path.join(output_dir, "README.md"))

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
        if self.args.should_save:
            self.create_model_card(output_dir=output_dir or self.args.output_dir)
            write_method_settings(output_dir or self.args.output_dir, self.method_settings())

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


def check_model_path(model: Any) -> None:
    """A model path meant to be local (``cards.looks_local``) that does not exist is named here: transformers would
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


class LossOnlyEvaluation:
    """Evaluation runs ``compute_loss`` only: these objectives log their own metrics and have no logits to return, so
    a ``compute_metrics`` would never be called; it is refused before anything is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("compute_metrics") is not None:
            raise ValueError(
                f"{type(self).__name__} evaluates its loss and logs its own metrics (no logits are returned), so "
                "`compute_metrics` would never be called. Remove it; its metrics appear as `eval_<method>/...`."
            )
        super().__init__(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


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


class MicroBatchIndex:
    """The index of a call among consecutive calls with the same key, e.g. ``(mode, global_step)``: which micro-batch
    of an optimizer step this is. Seeds per-micro-batch randomness so a resumed run draws what an uninterrupted one
    would (the count restarts at 0 whenever the key changes, as at a resume)."""

    def __init__(self) -> None:
        self._key: Hashable = None
        self._index = 0

    def __call__(self, key: Hashable) -> int:
        self._index = self._index + 1 if key == self._key else 0
        self._key = key
        return self._index

    def reset(self) -> None:
        """Count from 0 again (each evaluation draws the same randomness for the same data at the same step)."""
        self._key = None


class DeviceMetrics:
    """Per-micro-batch scalars kept on the device and read back once per ``log``: one gather and one host read per
    logging step instead of a gather and an ``.item()`` per scalar per micro-batch. Each mean is over every
    micro-batch of every process (every process records the same names the same number of times). Mix in before the
    TRL trainer; ``_metric_prefix`` names the metrics ``<prefix>/<name>``."""

    _metric_prefix: str = ""

    def record_metrics(self, mode: str, **values: torch.Tensor) -> None:
        pending = self.__dict__.setdefault("_pending_metrics", {}).setdefault(mode, defaultdict(list))
        for name, value in values.items():
            pending[name].append(value.detach().float().reshape(()))

    def reset_metrics(self, mode: str) -> None:
        super().reset_metrics(mode)
        self.__dict__.setdefault("_pending_metrics", {}).pop(mode, None)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        pending = self.__dict__.setdefault("_pending_metrics", {}).pop(mode, None)
        if pending:
            stacked = [torch.stack(values) for values in pending.values()]
            gathered = self.accelerator.gather(torch.cat(stacked)[None])  # (processes, every value)
            means = torch.stack([part.mean() for part in gathered.split([len(x) for x in stacked], dim=1)])
            store = _compat.metrics_store(self, mode)
            for name, value in zip(pending, means.tolist()):
                store[f"{self._metric_prefix}/{name}"] = [value]
        super().log(logs, start_time)
