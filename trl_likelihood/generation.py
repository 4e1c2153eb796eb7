"""Sampling used during training: batched completions of prompts with the KV cache, seeded per step and rank.

DDO scores reference samples ("fakes") against real data (ALGORITHMS.md 5(b)); the fakes must be samples of exactly
the distribution that is then scored, so this module runs its own short decoding loop rather than ``generate``:

- Prompts are left-padded and positions are counted from each row's first real token, so a padded row samples from
  the same distribution as the row alone (tested), and matches the right-padded batch it is scored in.
- Plain ancestral sampling by default (temperature 1, no top-k, no top-p), the distribution DDO's theory needs; the
  truncations are there for users who want them, documented as a departure [code: VAR sampling with cfg 1, no tricks].
- Randomness comes from a ``torch.Generator`` seeded by ``sampling_seed(seed, step, rank, micro)``, never from the
  global RNG: the same (seed, global step, rank, micro-batch) always draws the same samples, on every process and
  after a resume, and sampling does not shift the dropout or data-order randomness of training.
- The model runs in eval mode while it samples (no dropout; gradient checkpointing would otherwise turn the cache off).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Samples:
    """Prompts and their sampled completions, left-padded to one length.

    Attributes:
        input_ids: ``(B, P + N)`` prompt tokens (left-padded to ``P``) then the sampled tokens; ``pad_token_id`` before
            the prompt and after the completion's EOS.
        attention_mask: ``(B, P + N)``, 1 on prompt and completion tokens (EOS included), 0 on padding.
        completion_mask: ``(B, P + N)`` bool, true on sampled tokens up to and including the first EOS.
        prompt_length: ``P``, the padded prompt length; completions start at this column.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int

    def rows(self) -> list[tuple[list[int], list[int]]]:
        """Per row, ``(prompt tokens, completion tokens)`` without padding (EOS kept when it was sampled)."""
        out = []
        for ids, att, comp in zip(
            self.input_ids.tolist(), self.attention_mask.tolist(), self.completion_mask.tolist()
        ):
            prompt = [t for t, a in zip(ids[: self.prompt_length], att[: self.prompt_length]) if a]
            out.append((prompt, [t for t, c in zip(ids, comp) if c]))
        return out


def sampling_seed(seed: int, step: int, rank: int = 0, micro: int = 0) -> int:
    """A 63-bit seed from (base seed, global step, process rank, micro-batch): stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """``(B, V)`` fp32 logits divided by the temperature, with tokens outside top-k / the top-p nucleus at -inf."""
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p (first always)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _left_pad(prompts: Sequence[Sequence[int]] | torch.Tensor, pad_token_id: int, device: torch.device):
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.size(1) == 0:
            raise ValueError(f"`prompts` must be (B, P) with P >= 1, got shape {tuple(prompts.shape)}.")
        ids = prompts.to(device)
        return ids, torch.ones_like(ids)
    rows = [list(p) for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError(
            "`prompts` must be a non-empty list of non-empty token lists (start with BOS to sample freely)."
        )
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _cache_argument(model: torch.nn.Module) -> str:
    """The KV-cache keyword of the core model's ``forward``: ``cache`` in transformers 5.2x, else the old one."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(core).forward).parameters else "past_key_values"


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Samples:
    """Sample one completion per prompt from ``model`` (a causal LM, or a PEFT model, e.g. under ``adapter_disabled``).

    Args:
        model: called as ``model(input_ids, attention_mask, position_ids, cache, use_cache=True, logits_to_keep=1)``.
        prompts: token lists of any lengths (left-padded here), or a ``(B, P)`` tensor without padding. For
            unconditional sampling pass the start token (BOS) alone.
        max_new_tokens: most tokens sampled per row; a row stops at its first EOS (which is kept).
        eos_token_id: one id or several; ``None`` samples exactly ``max_new_tokens`` tokens per row.
        pad_token_id: written before prompts and after EOS.
        temperature, top_k, top_p: ``1.0``, ``0``, ``1.0`` sample the model's own distribution.
        generator: the source of randomness (on the model's device); else one seeded with ``seed`` (``0`` if None).
    """
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"Need 0 < top_p <= 1 and top_k >= 0, got top_p={top_p}, top_k={top_k}.")
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device).manual_seed(0 if seed is None else seed)
    eos = torch.tensor(
        [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
        device=device,
    )
    ids, mask = _left_pad(prompts, pad_token_id, device)
    prompt_length = ids.size(1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
    finished = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
    step_ids, new, keep = ids, [], []
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = {_cache_argument(model): DynamicCache(config=core.config)}  # filled in place, step by step
    was_training = model.training
    model.eval()
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights for CPU inference at their first eval-mode forward, and training cannot
        # use the packed layout afterwards. Those layers keep their mode: they have no dropout, only the packing.
        if type(module).__name__ == "Linear4bit" and device.type == "cpu":
            module.train(was_training)
    try:
        for _ in range(max_new_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **cache,
            )
            probs = _filter_logits(out.logits[:, -1].float(), temperature, top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            token = token.masked_fill(finished, pad_token_id)
            keep.append(~finished)
            new.append(token)
            finished = finished | torch.isin(token, eos)
            mask = torch.cat([mask, keep[-1][:, None].to(mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
            step_ids = token[:, None]
            if finished.all():
                break
    finally:
        model.train(was_training)
    completion = torch.stack(keep, 1)
    input_ids = torch.cat([ids, torch.stack(new, 1)], 1)
    completion_mask = torch.cat([torch.zeros_like(ids, dtype=torch.bool), completion], 1)
    return Samples(input_ids, mask, completion_mask, prompt_length)


def append_completions(
    batch: dict[str, torch.Tensor], rows: Sequence[tuple[list[int], list[int]]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """``batch`` (right-padded ``input_ids``/``attention_mask``/``labels``) with one row per ``(prompt, completion)``
    appended, all right-padded to one length; the new rows' labels score the completion (and its EOS) only."""
    device = batch["input_ids"].device
    width = max(batch["input_ids"].size(1), *(len(p) + len(c) for p, c in rows))
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(rows):
        n = len(prompt) + len(completion)
        ids[row, :n] = torch.tensor(prompt + completion, device=device)
        labels[row, len(prompt) : n] = ids[row, len(prompt) : n]
        mask[row, :n] = 1

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.size(1)), value=value)

    return {
        "input_ids": torch.cat([pad(batch["input_ids"], pad_token_id), ids]),
        "attention_mask": torch.cat([pad(batch["attention_mask"], 0), mask]),
        "labels": torch.cat([pad(batch["labels"], -100), labels]),
    }
