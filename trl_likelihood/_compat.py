"""The one place trl-likelihood touches private TRL.

Each shim names the TRL versions it was checked on; `tests/test_compat.py` covers every one, so a TRL release that
moves something breaks this file and its test, nowhere else. Checked on TRL 1.16.0.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import torch
import trl

# TRL 1.16: how DPOTrainer places its frozen ``ref_model`` for DeepSpeed (an inference engine; ZeRO-3 shards it, other
# stages run it at stage 0) and for FSDP (``fully_shard``). Our references are placed the same way.
# TRL 1.16: sampling under ZeRO-3 with every parameter gathered once and DeepSpeed's hooks removed for the phase.
from trl.models import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation  # noqa: F401,E402

# TRL 1.16: the chunked LM head that returns per-token log-probs without building (B, T, V) logits, and the helper
# DPO/KTO use to switch dropout off (a ratio to a dropout-free reference must not be noisy on one side).
# TRL 1.16: how SFTTrainer turns a model id into a model (dtype strings, float32 default). SequenceMatch must add its
# <bkspc> token before SFT wraps the model in PEFT, so it loads the model itself, the same way.
# TRL 1.16: its padding helper (right or left, to the longest row), for the batches built outside a collator.
from trl.trainer.utils import (  # noqa: F401  (re-exported)
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    pad,
)

TESTED_TRL = ("1.16",)

# Private methods of transformers' ``Trainer`` and TRL's ``SFTTrainer`` that the trainers here override or call, with
# their parameters in the pinned versions (transformers 5.24, TRL 1.16); tests/test_compat.py checks each against the
# installed classes, so a release that renames or reshapes one fails there first. Private attributes read or written:
# ``Trainer._signature_columns`` (implicit PRM), ``SFTTrainer._metrics`` / ``_total_train_tokens`` / ``_tp_size``
# (``metrics_store``, ``record_sft_metrics``).
PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    # _save: base.CardMixin (card), publishing.PublicSaves (public args), checkpoints (method settings), sequencematch
    "transformers.Trainer._save": ("self", "output_dir", "state_dict"),
    "transformers.Trainer._push_from_checkpoint": ("self", "checkpoint_folder"),  # publishing.PublicSaves
    "transformers.Trainer._save_checkpoint": ("self", "model", "trial"),  # checkpoints: disk-full, no local paths
    "transformers.Trainer._get_output_dir": ("self", "trial"),  # checkpoints: the folder a failed save names
    "transformers.Trainer._prepare_inputs": ("self", "inputs"),  # implicit PRM: the reference's precomputed batches
    "transformers.Trainer._set_signature_columns_if_needed": ("self",),  # implicit PRM: its extra columns
    "trl.SFTTrainer._prepare_dataset": (  # implicit PRM: pairs tokenised side by side; prepare_sft_dataset
        "self",
        "dataset",
        "processing_class",
        "args",
        "packing",
        "formatting_func",
        "dataset_name",
    ),  # fmt: skip
    "transformers.trainer.hf_api": (),  # uploads_staged: every Trainer upload goes through it
    "transformers.trainer_callback.CallbackHandler.call_event": (  # calling_callback_handler
        "self",
        "event",
        "args",
        "state",
        "control",
        "kwargs",
    ),  # fmt: skip
}


def is_peft(model: Any) -> bool:
    """True for a PEFT model, also when wrapped by DDP or an engine (``.module``).

    Accelerate's ``is_peft_model`` asks ``importlib.metadata`` whether PEFT is installed on every call (2.7 ms idle),
    and this runs on every training step (``modeling.core_model``), so the answer is read once."""
    from .modeling import unwrap_ddp

    peft_model = _peft_model_class()
    return peft_model is not None and isinstance(unwrap_ddp(model), peft_model)


@functools.cache
def _peft_model_class() -> type | None:
    from accelerate.utils import is_peft_available

    if not is_peft_available():
        return None
    from peft import PeftModel

    return PeftModel


def trl_version_is_tested() -> bool:
    """True when the installed TRL is inside the minor range these shims were checked on."""
    return any(trl.__version__.startswith(v) for v in TESTED_TRL)


def metrics_store(trainer: Any, mode: str) -> defaultdict[str, list[float]]:
    """TRL trainers keep per-step metrics in the private ``self._metrics[mode]`` and average them in ``log`` (1.16)."""
    return trainer._metrics[mode]


def record_sft_metrics(trainer: Any, inputs: dict[str, torch.Tensor], outputs: Any, mode: str) -> None:
    """Log what ``SFTTrainer.compute_loss`` logs (entropy, token accuracy, token count), from the fused outputs.

    Mirrors TRL 1.16's ``SFTTrainer.compute_loss`` so that a subclass that replaces the loss keeps SFT's dashboards.
    """
    gather = trainer.accelerator.gather_for_metrics
    store = metrics_store(trainer, mode)
    num_valid = gather(outputs.label_mask.sum()).sum()
    entropy_sum = gather(outputs.entropy.detach().sum()).sum()
    num_correct = gather(outputs.is_top1.sum()).sum()
    store["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
    store["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
    if mode == "train":
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:  # padding-free batches carry position ids instead of a mask
            local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
        trainer._total_train_tokens += gather(local).sum().item() // trainer._tp_size
    store["num_tokens"] = [trainer._total_train_tokens]


@contextmanager
def sft_init_accepting_loss_type(args: Any) -> Iterator[None]:
    """``SFTTrainer.__init__`` rejects a ``loss_type`` other than "nll"/"dft" (TRL 1.16). Trainers that reuse SFT's
    data pipeline but define their own ``loss_type`` (and their own ``compute_loss``) construct it under this."""
    own = args.loss_type
    args.loss_type = "nll"
    try:
        yield
    finally:
        args.loss_type = own


def prepare_sft_dataset(
    trainer: Any, dataset: Any, processing_class: Any, args: Any, dataset_name: str, shuffle: bool = True
) -> Any:
    """SFT's own tokenisation/truncation pipeline (``SFTTrainer._prepare_dataset``, TRL 1.16), without packing,
    called directly so that a subclass that overrides ``_prepare_dataset`` can run it on parts of its data.
    ``shuffle=False`` leaves out its closing ``shuffle_dataset`` shuffle (for a second pass over the same rows)."""
    if not shuffle and args.shuffle_dataset:
        args = copy.copy(args)
        args.shuffle_dataset = False
    return trl.SFTTrainer._prepare_dataset(trainer, dataset, processing_class, args, False, None, dataset_name)


@contextmanager
def uploads_staged(prepare: Callable[[str], None]) -> Iterator[None]:
    """Within the block the Trainer uploads a staged copy of each folder it pushes, so that what the Hub gets can
    differ from the local folder (a public ``adapter_config.json``) while the local folder loads as it is.

    transformers 5 routes every Trainer upload through ``transformers.trainer.hf_api().upload_folder``. The copy holds
    hard links of the large files and real copies of the small ones; ``prepare(folder)`` rewrites the copy; it is
    deleted once the upload (also a background one, ``run_as_future``) is done.
    """
    import transformers.trainer as trainer_module

    original = trainer_module.hf_api
    trainer_module.hf_api = lambda: _StagedUploads(original(), prepare)
    try:
        yield
    finally:
        trainer_module.hf_api = original


class _StagedUploads:
    """An ``HfApi`` whose ``upload_folder`` uploads a prepared copy; every other call goes to the real client."""

    def __init__(self, api: Any, prepare: Callable[[str], None]) -> None:
        self._api, self._prepare = api, prepare

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def upload_folder(self, **kwargs: Any) -> Any:
        from huggingface_hub.utils import filter_repo_objects

        folder = kwargs["folder_path"]
        names = [
            os.path.relpath(os.path.join(root, file), folder) for root, _, files in os.walk(folder) for file in files
        ]
        kept = filter_repo_objects(
            names, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=kwargs.get("ignore_patterns")
        )
        stage = tempfile.mkdtemp(prefix="trl-likelihood-upload-")
        try:
            for name in kept:
                source, target = os.path.join(folder, name), os.path.join(stage, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.getsize(source) < _COPY_BELOW:
                    shutil.copy2(source, target)  # small files may be rewritten: never a link to the local file
                else:
                    _link_or_copy(source, target)
            self._prepare(stage)
            result = self._api.upload_folder(**{**kwargs, "folder_path": stage})
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if isinstance(result, Future):
            result.add_done_callback(lambda _: shutil.rmtree(stage, ignore_errors=True))
        else:
            shutil.rmtree(stage, ignore_errors=True)
        return result


_COPY_BELOW = 1 << 20  # bytes: configs, cards and tokenizer files are copied, weights are linked


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def calling_callback_handler() -> Any:
    """The ``transformers.CallbackHandler`` whose event is calling the current callback method, or ``None``.

    Events carry no handle on the trainer or its callback list (transformers 5: ``CallbackHandler.call_event`` loops
    over ``self.callbacks`` and calls each); a callback that must run before the reporters finds the list here.
    """
    import sys

    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    for _ in range(4):  # the callback's method (and its helpers), then call_event
        if frame is None:
            return None
        handler = frame.f_locals.get("self")
        if frame.f_code.co_name == "call_event" and isinstance(handler, CallbackHandler):
            return handler
        frame = frame.f_back
    return None
