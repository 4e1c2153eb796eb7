"""The likelihood-ratio core: per-token and per-sequence log-probs of scored tokens under a policy and a reference.

Shared by the implicit PRM (the reward is ``beta * log pi/pi_ref``) and DDO (the discriminator is the same ratio).
Log-probs come from TRL's fused LM head in fp32, so the ``(B, T, V)`` logits are never built; scoring without a
gradient on CPU, where that head has no Triton kernel, reads the model's own logits instead
(``scoring_token_logps``). The reference is one of:

- ``"adapter"``: the PEFT model with its adapter disabled, so no second copy of the weights is in memory;
- ``"model"``: an explicit frozen model (given by the user, or a copy of the policy at the start);
- ``"precomputed"``: log-prob sums stored in the dataset before training (``precompute_ref_log_probs``), for data
  that is seen several times.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import _compat, engines
from .modeling import core_model, unwrap_ddp


@dataclass
class TokenLogps:
    """Log-probs of the scored tokens of a batch.

    Attributes:
        logps: ``(B, T-1)`` fp32 ``log p(x_t | x_<t)`` at target positions, ``0`` where not scored.
        mask: ``(B, T-1)`` bool, true on scored tokens (labels != -100 after the causal shift).
        outputs: the fused model output (``entropy`` and ``is_top1`` when the head computes them).
    """

    logps: torch.Tensor
    mask: torch.Tensor
    outputs: Any = None

    def sequence(self) -> torch.Tensor:
        """``(B,)`` sums over scored tokens: no length normalisation, as in the papers' official code."""
        return self.logps.sum(-1)


def ensure_fused_head(model: torch.nn.Module, outputs: tuple[str, ...] = ("log_probs",)) -> None:
    """Patch ``model`` (the base model under PEFT) with TRL's fused LM head, once."""
    target = core_model(model)
    if not getattr(target, "_trl_likelihood_fused", False):
        _compat.add_fused_lm_head(target, outputs=outputs)
        target._trl_likelihood_fused = True


def token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenLogps:
    """One forward of ``model`` (with a fused head) on ``input_ids``/``attention_mask``/``labels``; fp32 log-probs."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids") if k in batch}
    outputs = model(**inputs, use_cache=False, fused_lm_head=True)
    return TokenLogps(outputs.log_probs.float(), outputs.label_mask, outputs)


# fp32 logits that ``scoring_token_logps`` holds at once where TRL's fused head has no Triton kernel (128 MiB)
SCORING_LOGITS_PER_CHUNK = 2**25


@torch.no_grad()
def scoring_token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenLogps:
    """``token_logps`` for scoring (no gradient), by the cheaper route on the batch's device.

    With Triton (CUDA, XPU) TRL's fused head projects only the scored positions, so it is used. Elsewhere (CPU) its
    torch fallback projects every position, padding and prompt included, and folds each tile in several passes: a
    third of the time of ``trl-likelihood score`` on CPU. There the model's own forward gives the logits of the
    positions from the first scored one on (``logits_to_keep``, so softcapping and logit scales stay the model's), for
    as many rows at a time as fit ``SCORING_LOGITS_PER_CHUNK``, and a log-softmax reads the targets; a row too long
    for that budget goes through the fused head. Both routes agree to fp32 rounding (``tests/test_scoring.py``).
    """
    target = core_model(model)
    if batch["input_ids"].device.type in ("cuda", "xpu") or not _takes_logits_to_keep(target):
        return token_logps(model, batch)
    labels = batch["labels"][:, 1:]  # position j predicts token j + 1
    mask = labels != -100
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=labels.device)
    scored_columns = mask.any(0).nonzero()
    if len(scored_columns) == 0:
        return TokenLogps(logps, mask)
    first = int(scored_columns[0])  # no row scores a token before position first + 1
    keep = mask.shape[1] + 1 - first  # logits of positions first .. T-1; the last one predicts nothing
    vocab = engines.full_shape(target.get_output_embeddings().weight)[0]  # a ZeRO-3 partition's own shape is (0,)
    rows_per_chunk = SCORING_LOGITS_PER_CHUNK // (keep * vocab)
    if rows_per_chunk == 0:  # one row's logits would not fit: the fused head never builds them
        return token_logps(model, batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    for start in range(0, mask.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        chunk = {k: v[rows] for k, v in inputs.items()}
        logits = model(**chunk, use_cache=False, logits_to_keep=keep).logits[:, :-1].float()
        targets = labels[rows, first:].clamp(min=0).unsqueeze(-1)
        chunk_logps = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, -1)
        logps[rows, first:] = chunk_logps.masked_fill(~mask[rows, first:], 0.0)
    return TokenLogps(logps, mask)


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module):
    """Run the PEFT ``model`` as its base model (the implicit reference), then restore the adapter."""
    unwrapped = unwrap_ddp(model)
    engines.initialize_fsdp(unwrapped)  # before PEFT flips the adapter's requires_grad off
    with unwrapped.disable_adapter():
        yield unwrapped


class Reference:
    """Where reference log-probs come from; ``sequence_logps(batch)`` returns ``(B,)`` sums under no grad."""

    def __init__(
        self,
        policy: torch.nn.Module,
        ref_model: torch.nn.Module | None = None,
        precomputed: bool = False,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        if precomputed:
            self.kind = "precomputed"
        elif ref_model is not None:
            self.kind = "model"
        elif _compat.is_peft(policy):
            self.kind = "adapter"
        else:
            raise ValueError(
                "No reference: pass `ref_model`, a `peft_config` (the reference is the base with the adapter "
                "disabled), or set `precompute_ref_log_probs=True`."
            )
        self.ref_model = ref_model
        # The policy's mixed precision (accelerate's autocast): at theta = theta_ref the log-ratio is then exactly 0.
        self.autocast = autocast
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            ensure_fused_head(ref_model)

    @torch.no_grad()
    def sequence_logps(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor], column: str = "ref_logps"):
        """``(B,)`` reference log-prob sums of the scored tokens of ``batch``."""
        if self.kind == "precomputed":
            if column not in batch:
                raise KeyError(f"Precomputed reference log-probs expected in column {column!r} of the batch.")
            return batch[column].float()
        with self.autocast():
            if self.kind == "adapter":
                with adapter_disabled(policy) as base:
                    return token_logps(base, batch).sequence()
            return token_logps(self.ref_model, batch).sequence()


def trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full copies of the trainable weights (the adapter, under PEFT), gathered under ZeRO-3/FSDP2. With
    ``weights_swapped`` they are a frozen reference that costs one adapter of memory instead of a second model (DDO's
    self-play rounds)."""
    return {n: engines.read_full(p) for n, p in unwrap_ddp(model).named_parameters() if p.requires_grad}


@contextlib.contextmanager
def weights_swapped(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """Run ``model`` with the named ``weights`` in place of its own, then restore them.

    It writes into the (trainable) tensors, so use it before the step's policy forward, never between that forward and
    its backward.
    """
    unwrapped = unwrap_ddp(model)
    params = dict(unwrapped.named_parameters())
    current = {n: engines.read_full(params[n]) for n in weights}
    try:
        for n, value in weights.items():
            engines.write_full(params[n], value)
        yield unwrapped
    finally:
        for n, value in current.items():
            engines.write_full(params[n], value)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` (a reference for full fine-tuning) whose ``forward`` runs its own weights.

    The copy (``engines.full_copy``: a deep copy, gathered under ZeRO-3) of a model patched with TRL's fused head
    keeps the patch's closure over the original's ``forward``: the copy's plain (non-fused) forward, the one
    ``generate`` and sampling call, would run the original's weights. The patch is dropped here; ``Reference`` patches
    the copy again, bound to itself.
    """
    ref = engines.full_copy(model)
    vars(ref).pop("forward", None)
    vars(ref).pop("_trl_likelihood_fused", None)
    return ref.eval().requires_grad_(False)


def build_reference(trainer: Any, ref_model: Any) -> Reference:
    """A trainer's reference, in TRL's order: ``ref_model`` (object or path); with PEFT, the base with the adapter
    disabled; else a frozen copy of the initial policy (as ``DPOTrainer`` does). Sets ``trainer._reference_name``
    (public name for the model card) and ``trainer._reference_source`` (``Reference.kind``)."""
    from transformers import AutoModelForCausalLM

    from .cards import public_model_name

    name = (
        ref_model if isinstance(ref_model, str) else getattr(getattr(ref_model, "config", None), "_name_or_path", None)
    )
    trainer._reference_name = public_model_name(name)
    if isinstance(ref_model, str):
        init_kwargs = dict(trainer.args.model_init_kwargs or {})
        if init_kwargs.get("dtype") is None:  # the policy's precision unless the user set one
            init_kwargs["dtype"] = trainer.model.dtype
        ref_model = AutoModelForCausalLM.from_pretrained(ref_model, **init_kwargs)
    if ref_model is None and not _compat.is_peft(trainer.model):
        ref_model = frozen_copy(trainer.accelerator.unwrap_model(trainer.model))
    reference = Reference(trainer.model, ref_model, autocast=trainer.accelerator.autocast)
    if ref_model is not None:  # placed for the engine after the fused head is patched in
        reference.ref_model = engines.prepare_frozen(ref_model, trainer.accelerator)
    trainer._reference_source = reference.kind
    return reference
