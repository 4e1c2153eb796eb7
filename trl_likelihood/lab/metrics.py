"""Exact metrics of a causal LM against a lab task's known P (ALGORITHMS.md 1 and 2(g)); all in nats.

Prefixes come from held-out sequences sampled from P: every position of every sequence up to its EOS is one prefix,
so prefixes are weighted as P visits them. The gold next-token row of a prefix is exact (a bigram row, or EOS when
forced), so JS and the mass on impossible tokens need no Monte Carlo beyond the choice of prefixes.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import DynamicCache

from ..metrics import impossible_mass, invalid_rate, per_context_js, reverse_cross_entropy
from ..modeling import eval_mode
from .bigram import BOS_ID, EOS_ID, PAD_ID, BigramTask


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def prefix_metrics(model: torch.nn.Module, ids: torch.Tensor, task: BigramTask, batch_size: int = 500) -> dict:
    """JS to the gold row, mass on impossible tokens and NLL, averaged over every prefix of ``ids`` (``(n, L)``).

    ``ids`` are sequences from P as ``task.sample`` returns them. The model's whole vocabulary counts: mass on
    ``<pad>``/``<bos>`` or on ids beyond the task is mass on impossible tokens.
    """
    device, model_rows, gold_rows, nll = _device(model), [], [], []
    for chunk in ids.split(batch_size):
        logits = model(input_ids=chunk.to(device), attention_mask=(chunk != PAD_ID).long().to(device)).logits
        logq = torch.log_softmax(logits[:, :-1].double().cpu(), dim=-1)  # (b, L-1, V_model)
        gold = task.next_token_probs(chunk[:, :-1])  # (b, L-1, num_ids)
        gold = torch.nn.functional.pad(gold, (0, logq.shape[-1] - gold.shape[-1]))
        targets = chunk[:, 1:]
        valid = targets != PAD_ID  # prefixes up to the EOS
        model_rows.append(logq.exp()[valid].numpy())
        gold_rows.append(gold[valid].numpy())
        nll.append(-logq.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[valid])
    # The library's metric maths, which the shipped ``evaluate`` modules wrap.
    model_probs, true_probs = np.concatenate(model_rows), np.concatenate(gold_rows)
    return {
        "js": per_context_js(model_probs, true_probs),
        "zero_mass": impossible_mass(model_probs, true_probs),
        "nll": torch.cat(nll).mean().item(),
        "num_prefixes": len(model_probs),
    }


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x; the old name goes in 5.40): use the one present."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_model(
    model: torch.nn.Module, task: BigramTask, n: int, seed: int, batch_size: int = 1000, temperature: float = 1.0
) -> torch.Tensor:
    """``n`` ancestral samples from the model, ``(n, max_len + 1)``, ``<bos>`` first; stops once every row has EOS.

    Decodes with a ``DynamicCache`` that the model fills in place, and explicit ``position_ids``; every row has the
    same length, so no padding is involved. Tokens after a row's first EOS are ignored by ``task.log_prob``.
    """
    device, generator = _device(model), torch.Generator().manual_seed(seed)
    cache_kwarg = _cache_kwarg(model)
    out = torch.full((n, task.max_len + 1), PAD_ID, dtype=torch.long)
    for start in range(0, n, batch_size):
        ids = torch.full((min(batch_size, n - start), 1), BOS_ID, dtype=torch.long)
        step_input, cache, done = ids, DynamicCache(), torch.zeros(len(ids), dtype=torch.bool)
        for position in range(task.max_len):
            positions = torch.full_like(step_input, position).to(device)
            kwargs = {cache_kwarg: cache, "use_cache": True, "position_ids": positions}
            logits = model(input_ids=step_input.to(device), **kwargs).logits[:, -1]
            probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)
            step_input = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, step_input], dim=1)
            done |= step_input.squeeze(1) == EOS_ID
            if done.all():
                break
        out[start : start + len(ids), : ids.shape[1]] = ids
    return out


@torch.no_grad()
def bigram_metrics(
    model: torch.nn.Module,
    task: BigramTask,
    num_sequences: int = 1000,
    num_samples: int = 2000,
    seed: int = 1234,
    batch_size: int = 500,
) -> dict[str, float]:
    """The four metrics of ALGORITHMS.md 2(g) plus the reverse cross-entropy, for a model of ``task``.

    Args:
        model: a causal LM over ``task.tokenizer()``'s ids (``model(input_ids=...).logits``, KV cache supported).
        num_sequences: held-out sequences from P, drawn with ``task.sample(num_sequences, seed)``; use a ``seed``
            different from the training data's.
        num_samples: temperature-1 samples from the model for the invalid-sample rate (drawn with ``seed + 1``).

    Returns:
        ``js``: mean per-prefix JS divergence to the gold row. ``zero_mass``: mean model mass on tokens with
        ``P = 0``. ``nll``: held-out NLL per token (EOS included). ``invalid_rate``: share of samples with a
        zero-probability transition (or no EOS by ``max_len``). ``reverse_nll``: ``-log P`` per token over the valid
        samples. ``num_prefixes``: how many prefixes the first three average over.
    """
    with eval_mode(model):
        metrics = prefix_metrics(model, task.sample(num_sequences, seed), task, batch_size)
        log_p, num_tokens = task.log_prob(sample_model(model, task, num_samples, seed + 1, 2 * batch_size))
    log_p, num_tokens = log_p.double().numpy(), num_tokens.double().numpy()
    metrics["invalid_rate"] = invalid_rate(log_p)
    metrics["reverse_nll"] = reverse_cross_entropy(log_p, num_tokens)
    return metrics


def sample_diversity(ids: torch.Tensor, task: BigramTask) -> dict[str, float]:
    """Diversity of samples ``(n, L)`` (``<bos>`` first, as ``sample_model`` returns them), to catch mode collapse.

    Every transition up to a row's first ``<eos>``/``<pad>`` (the EOS included) counts; with a fixed-length task
    (``eos=False``) the first ``max_len`` do. Returns ``distinct_bigrams`` (distinct transitions seen, ``<bos>`` rows
    included), ``distinct_valid_bigrams`` (those with ``P > 0``: invalid transitions inflate the raw count, so a model
    that stops making mistakes loses distinct bigrams without losing diversity), ``valid_bigram_coverage`` (the latter
    over the number of ``P > 0`` transitions) and ``token_entropy`` (nats, of the emitted tokens' frequencies).
    """
    ids = ids[:, : task.max_len + 1].cpu().long()
    prev, nxt = ids[:, :-1], ids[:, 1:]
    ends = (nxt == PAD_ID) | (prev == EOS_ID) | (prev == PAD_ID)
    keep = ends.long().cumsum(1) == 0  # transitions before the first end (an emitted EOS is kept)
    pairs = torch.unique(prev[keep] * task.num_ids + nxt[keep])
    valid = task.transition.flatten()[pairs.clamp(max=task.num_ids**2 - 1)] > 0
    valid &= pairs < task.num_ids**2  # ids beyond the task's table are never valid
    counts = torch.bincount(nxt[keep], minlength=task.num_ids).double()
    freq = counts[counts > 0] / counts.sum()
    return {
        "distinct_bigrams": float(len(pairs)),
        "distinct_valid_bigrams": float(valid.sum()),
        "valid_bigram_coverage": float(valid.sum()) / float((task.transition > 0).sum()),
        "token_entropy": float(-(freq * freq.log()).sum()),
    }
