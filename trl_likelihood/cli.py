"""The ``trl-likelihood <method>`` console script, shared with the launch scripts in ``trainers/``.

It mirrors ``trl sft``: the same ``TrlParser`` over ``ScriptArguments``, the method's config, ``ModelConfig`` and
``DatasetMixtureConfig``, so ``--config cfg.yaml``, ``--model_name_or_path``, ``--dataset_name``, ``--use_peft``,
``--lora_r``, ``--load_in_4bit``, ``--push_to_hub`` and every config field work as they do in TRL. Unlike ``trl sft``
it trains in the calling process; for several processes launch it through accelerate::

    trl-likelihood mixce --config cfg.yaml
    accelerate launch --num_processes 2 -m trl_likelihood.cli mixce --config cfg.yaml
    accelerate launch trainers/mixce.py --config cfg.yaml          # from a source checkout

On a machine without GPUs, two processes over gloo (``methods.CPU_RECIPE``; ``tests/test_distributed.py`` runs it)::

    accelerate launch --multi_gpu --num_processes 2 --mixed_precision no \
        trainers/mixce.py --config mixce.yaml --use_cpu

Without ``--multi_gpu`` accelerate silently starts a single process; ``--use_cpu`` goes to the script, since
accelerate's own ``--cpu`` also starts a single process.

A new method is one row of ``methods.METHODS``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from accelerate import PartialState
from accelerate.logging import get_logger
from datasets.exceptions import DatasetGenerationError
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from .data import hub_dataset_id, load_training_dataset
from .methods import METHODS, PROG
from .paths import is_local_path
from .trainers.config_checks import check_model_path

if TYPE_CHECKING:
    from .trainers import MixCEConfig, MixCETrainer

logger = get_logger(__name__)


def make_parser(method: str = "mixce", prog: str | None = None) -> TrlParser:
    """The argument parser of one method: TRL's ``TrlParser`` over the same dataclasses as ``trl sft``."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {sorted(METHODS)}.")
    dataclass_types = (ScriptArguments, METHODS[method].config_class, ModelConfig, DatasetMixtureConfig)
    prog = prog or f"{PROG} {method}"
    # argparse's generated usage lists every one of the ~200 flags; a parse error should fit on a screen.
    usage = f"{prog} [--config CFG.yaml] [--model_name_or_path M] [--dataset_name D] [--output_dir DIR] [...]"
    parser = TrlParser(dataclass_types, prog=prog, usage=usage)
    _method_flags_first(parser, method, METHODS[method].config_class)
    return parser


def trl_parent(config_class: type) -> type:
    """The TRL config a method's config extends (``SFTConfig``), or ``TrainingArguments`` for a config that extends
    transformers' directly (``StepwisePRMConfig``, as TRL's former ``PRMConfig`` did)."""
    return next(c for c in config_class.__mro__[1:] if c.__module__.startswith(("trl.", "transformers.")))


def method_fields(config_class: type) -> set[str]:
    """The fields a method adds to its TRL parent config (``eta`` for MixCE), not those it inherits or re-defaults."""
    return {f.name for f in fields(config_class)} - {f.name for f in fields(trl_parent(config_class))}


def _method_flags_first(parser: TrlParser, method: str, config_class: type) -> None:
    """Move the method's own flags into a first help section: argparse lists flags in the order the dataclasses
    declare them, which puts them after the ~200 of ``TrainingArguments`` and ``SFTConfig``. Parsing is unchanged;
    only help's grouping (argparse's ``_action_groups``, stable since Python 3.2) is rearranged."""
    own = method_fields(config_class)
    parent = trl_parent(config_class).__name__
    group = parser.add_argument_group(f"{method} options", f"{config_class.__name__}'s own fields; {parent}'s follow.")
    for action in [a for a in parser._actions if a.dest in own]:  # a bool field has --x and --no_x
        for container in parser._action_groups:
            if action in container._group_actions:
                container._group_actions.remove(action)
        group._group_actions.append(action)
    parser._action_groups.insert(0, parser._action_groups.pop())


def model_init_kwargs(training_args: Any, model_args: ModelConfig) -> dict[str, Any]:
    """``from_pretrained`` keywords from ``ModelConfig``, with quantization and device placement as TRL scripts do.

    Values the user put in ``training_args.model_init_kwargs`` win, as in ``trl/scripts/sft.py``.
    """
    kwargs: dict[str, Any] = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = kbit_device_map()
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def kbit_device_map() -> dict[str, int] | None:
    """Put a k-bit model on this process's accelerator; ``None`` (CPU) when there is none.

    TRL's ``get_kbit_device_map`` did this and is gone from TRL 1.16; ``SFTTrainer`` still resets ``device_map`` to
    ``None`` under multi-GPU DDP.
    """
    import torch

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return {"": PartialState().local_process_index}
    return None


def load_splits(script_args: ScriptArguments, training_args: Any, dataset_args: DatasetMixtureConfig | None):
    """Return ``(train_dataset, eval_dataset or None)`` from ``--dataset_name`` or a ``datasets:`` mixture."""
    if dataset_args is not None and dataset_args.datasets:
        if script_args.dataset_name:
            logger.warning("Both `datasets` and `dataset_name` are given; training on `datasets` only.")
        dataset = get_dataset(dataset_args)
        source = "the `datasets` mixture"
    elif script_args.dataset_name:
        dataset = load_data_file_or_hub(script_args)
        source = f"--dataset_name {script_args.dataset_name!r}"
    else:
        raise ValueError(
            "No training data: pass --dataset_name (a Hub dataset id, or a local json/jsonl/parquet/csv file or "
            "folder), or a `datasets:` mixture in the --config file."
        )
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
    if train_split not in dataset:
        raise ValueError(
            f"{source} has no split {train_split!r} (--dataset_train_split); its splits are {list(dataset)}."
        )
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if test_split not in dataset:
            strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)  # not its repr
            raise ValueError(
                f"--eval_strategy {strategy} needs an evaluation split, but {source} has no "
                f"split {test_split!r} (--dataset_test_split); its splits are {list(dataset)}. Set "
                "--dataset_test_split, --test_split_size in a mixture, or --eval_strategy no."
            )
        eval_dataset = dataset[test_split]
    return dataset[train_split], eval_dataset


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def load_data_file_or_hub(script_args: ScriptArguments):
    """``load_training_dataset`` for ``--dataset_name``; a local file that ``datasets`` cannot read becomes one line
    naming the file and, for JSON, the line (``datasets`` raises a ``DatasetGenerationError``, or a bare
    ``StopIteration`` for an empty file, with the reason two causes deep)."""
    name = script_args.dataset_name
    json_log = logging.getLogger("datasets.packaged_modules.json.json")
    level = json_log.level
    json_log.setLevel(logging.CRITICAL)  # its "Failed to load JSON ... in row 2" counts rows from 0, blocks apart
    try:
        return load_training_dataset(name, script_args.dataset_config, streaming=script_args.dataset_streaming)
    except (DatasetGenerationError, StopIteration, ValueError) as err:
        path = os.path.expanduser(name)
        if not os.path.isfile(path):
            raise
        problem = json_file_problem(path)
        if problem:
            raise ValueError(f"{name} {problem}") from None
        if isinstance(err, ValueError) and err.__cause__ is None:
            raise  # our own refusal (e.g. an unsupported suffix), already one clear line
        reason = err.__cause__ or err  # DatasetGenerationError itself says only "An error occurred"
        raise ValueError(f"{name} could not be read: {type(reason).__name__}: {reason}") from None
    finally:
        json_log.setLevel(level)


def json_file_problem(path: str) -> str | None:
    """Where a ``.json``/``.jsonl`` file (plain or compressed) stops being rows: ``"line N: reason"`` or ``"is empty:
    ..."``; ``None`` for other files and when every line parses. Read only after ``datasets`` failed on it; a JSON
    Lines file is streamed, so a large corpus is never held in memory."""
    root, ext = os.path.splitext(path.lower())
    opener = _OPENERS.get(ext, open)
    ext = os.path.splitext(root)[1] if ext in _OPENERS else ext
    if ext not in (".json", ".jsonl"):
        return None
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        lines: Any = f
        if ext == ".json":
            text = f.read()
            try:
                json.loads(text)
                return None
            except json.JSONDecodeError as err:
                if text.strip() and not err.msg.startswith("Extra data"):  # else JSON Lines: read line by line
                    return f"line {err.lineno}, column {err.colno}: {err.msg.removesuffix(' starting at')}."
            lines = text.splitlines()
        empty = True
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            empty = False
            try:
                row = json.loads(line.rstrip("\r\n"))  # a streamed line keeps its newline
            except json.JSONDecodeError as err:
                return f"line {number}, column {err.colno}: {err.msg.removesuffix(' starting at')}."
            if not isinstance(row, dict):
                got = f"{type(row).__name__} {line.strip():.40}"
                return f"line {number}: expected one JSON object per line, got {got}."
    return "is empty: it has no rows to train on." if empty else None


def build_trainer(
    method: str,
    script_args: ScriptArguments,
    training_args: Any,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
):
    """Everything before ``train()``: data, model keywords, PEFT; every error about the inputs is raised here."""
    spec = METHODS[method]
    if not isinstance(training_args, spec.config_class):
        raise TypeError(f"`training_args` must be a {spec.config_class.__name__}, got {type(training_args).__name__}.")
    if not model_args.model_name_or_path:
        raise ValueError("No model: pass --model_name_or_path (a Hub id or a local folder).")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise ValueError("--load_in_4bit / --load_in_8bit train only an adapter: add --use_peft.")
    model = model_args.model_name_or_path
    check_model_path(model)  # a mistyped local path, named before the data is read
    train_dataset, eval_dataset = load_splits(script_args, training_args, dataset_args)
    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    try:
        return spec.trainer_class(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            peft_config=get_peft_config(model_args),
        )
    except OSError as err:
        if is_local_path(model):  # a path that does not exist was refused before (``check_model_path``)
            raise
        # A Hub id: transformers tried the Hub.
        raise OSError(
            f"--model_name_or_path {model!r} is no local folder (resolved to "
            f"{os.path.abspath(os.path.expanduser(model))!r}) and could not be loaded as a Hub id: {err}"
        ) from err


def hub_datasets(script_args: ScriptArguments, dataset_args: DatasetMixtureConfig | None) -> list[str]:
    """The Hub datasets trained on, for the card; local files are left out rather than linked to the Hub."""
    names = [d.path for d in dataset_args.datasets] if dataset_args and dataset_args.datasets else []
    names = names or [script_args.dataset_name]
    return [name for name in names if hub_dataset_id(name)]


def train_and_save(trainer: Any, datasets: list[str] | None = None) -> None:
    """Train, save the model and its card once (rank 0), push if asked, then release the process group."""
    args = trainer.args
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.accelerator.print("Training completed.")
    trainer.save_model(args.output_dir)  # our save_model writes README.md; with push_to_hub it pushes too
    if datasets:
        trainer.create_model_card(dataset_name=datasets)  # the same card, now naming the data
    trainer.save_state()  # trainer_state.json: the log history next to the weights, as transformers' examples do
    trainer.accelerator.print(f"Model saved to {args.output_dir}")
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=datasets or None)  # again, so the pushed card names the dataset
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}")
    # Every rank is done, then release the GIL briefly before the process group goes: destroying a gloo group while
    # its worker thread still waits for the GIL (to free the last all-gather) hangs a rank at exit (pytorch#56297).
    trainer.accelerator.wait_for_everyone()
    time.sleep(0.1)
    trainer.end()


def run(
    method: str,
    script_args: ScriptArguments,
    training_args: Any,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
):
    """Train ``method`` from parsed arguments, save (and push) it, and return the trainer."""
    trainer = build_trainer(method, script_args, training_args, model_args, dataset_args)
    train_and_save(trainer, hub_datasets(script_args, dataset_args))
    return trainer


def run_mixce(
    script_args: ScriptArguments,
    training_args: MixCEConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig | None = None,
) -> MixCETrainer:
    """``trl-likelihood mixce`` as a function: train, save, push if asked; returns the trainer."""
    return run("mixce", script_args, training_args, model_args, dataset_args)


def _fail(prog: str, err: BaseException) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trl-likelihood`` (``entry.main``): help and dispatch; returns the exit status."""
    from .entry import main as entry_main  # deferred: entry dispatches to this module

    return entry_main(argv)


def run_method(method: str, rest: Sequence[str]) -> int:
    """Parse one method's flags and YAML, build the trainer, train, save; 2 for a bad argument, config or dataset."""
    parser = make_parser(method)
    try:
        script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(list(rest))
    except (ValueError, OSError) as err:  # bad values (e.g. eta) in flags or YAML, unknown keys, missing --config
        return _fail(parser.prog, err)
    try:
        trainer = build_trainer(method, script_args, training_args, model_args, dataset_args)
    except (ValueError, OSError) as err:  # missing or malformed data, missing model: nothing has trained yet
        return _fail(parser.prog, err)
    train_and_save(trainer, hub_datasets(script_args, dataset_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
