"""The metric maths of the package, as pure functions of given numbers: the shipped ``evaluate`` modules, the
trainers' logged metrics and the lab's reports all call these (the lab computes through them directly, not through
the modules).

Three kinds. AUROCs (``binary_auroc`` on tensors, ``auroc`` on two score arrays). The lab's exact metrics, where the
caller supplies the true distribution: per-context JS and mass on impossible tokens from next-token distributions,
invalid-sample rate and reverse cross-entropy from the true ``log P`` of model samples, step AUROC and first-error
localisation from step scores and step labels. And generation-quality metrics for any text (no true distribution, no
download): distinct-n, repetition rate and mean length on tokenised text, and perplexity under a scorer model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

# ----- AUROC


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (bool): P[score_pos > score_neg] + 0.5 P[tie].

    Mann-Whitney U with mid-ranks for ties; ``nan`` when one class is absent.
    """
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    mid = torch.cumsum(counts, 0).double() - (counts.double() - 1) / 2  # 1-based rank of each value, ties averaged
    ranks = torch.empty_like(scores)
    ranks[order] = mid[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).item()


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive score > negative score), ties counted 1/2; nan if either is empty (``binary_auroc``)."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    scores = torch.from_numpy(np.concatenate([positive, negative]))
    labels = torch.cat([torch.ones(positive.size, dtype=torch.bool), torch.zeros(negative.size, dtype=torch.bool)])
    return binary_auroc(scores, labels)


def tie_credit(scores: np.ndarray, hit: np.ndarray, best: str) -> np.ndarray:
    """Per row, the share of the best-scored entries (``"min"`` or ``"max"``) that are hits: uniform tie-breaking."""
    target = scores.min(-1, keepdims=True) if best == "min" else scores.max(-1, keepdims=True)
    chosen = scores == target
    return (chosen & hit).sum(-1) / chosen.sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log) over the last dim; ``0 log 0 = 0``. Equals scipy's squared distance."""
    m = 0.5 * (p + q)
    return 0.5 * (torch.xlogy(p, p) - torch.xlogy(p, m) + torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)


# ----- exact metrics against a known P


def _distributions(model_probs: Any, true_probs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, V)`` float64 tensors of next-token distributions, checked to be distributions of the same shape."""
    q, p = torch.as_tensor(np.asarray(model_probs, dtype=np.float64)), torch.as_tensor(np.asarray(true_probs, float))
    for name, x in (("model_probs", q), ("true_probs", p)):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"`{name}` must be a non-empty (contexts, vocab) array, got shape {tuple(x.shape)}.")
        if (x < 0).any() or not torch.allclose(x.sum(-1), torch.ones(len(x), dtype=x.dtype), atol=1e-4):
            raise ValueError(f"Every row of `{name}` must be a probability distribution (non-negative, sum 1).")
    if p.shape != q.shape:
        raise ValueError(f"`model_probs` {tuple(q.shape)} and `true_probs` {tuple(p.shape)} differ in shape.")
    return q, p


def per_context_js(model_probs: Any, true_probs: Any) -> float:
    """Mean Jensen-Shannon divergence (nats) between the model's and the true next-token distribution of each context.

    Rows are contexts, weighted equally: pass one row per visited prefix (as ``prefix_metrics`` does) to weight
    contexts as P visits them.
    """
    q, p = _distributions(model_probs, true_probs)
    return js_divergence(p, q).mean().item()


def impossible_mass(model_probs: Any, true_probs: Any) -> float:
    """Mean model probability on tokens the true distribution gives probability 0, over contexts (rows)."""
    q, p = _distributions(model_probs, true_probs)
    return torch.where(p == 0, q, 0.0).sum(-1).mean().item()


def invalid_rate(log_p: Any) -> float:
    """Share of samples that are impossible under P: ``log_p`` is their true ``log P`` (``-inf`` when impossible),
    e.g. the first output of ``BigramTask.log_prob(samples)``."""
    log_p = np.asarray(log_p, dtype=np.float64)
    if log_p.size == 0:
        raise ValueError("`log_p` is empty: pass the true log-probability of at least one sample.")
    return float(1.0 - np.isfinite(log_p).mean())


def reverse_cross_entropy(log_p: Any, num_tokens: Any) -> float:
    """``-log P`` per token (nats) of the model's valid samples: how plausible what the model writes is under P.

    ``log_p`` and ``num_tokens`` are ``BigramTask.log_prob(samples)``; impossible samples (``-inf``) are left out,
    as in ``bigram_metrics`` (``invalid_rate`` counts them); ``nan`` when no sample is valid.
    """
    log_p, num_tokens = np.asarray(log_p, dtype=np.float64), np.asarray(num_tokens, dtype=np.float64)
    if log_p.shape != num_tokens.shape:
        raise ValueError(f"`log_p` {log_p.shape} and `num_tokens` {num_tokens.shape} must have the same shape.")
    valid = np.isfinite(log_p)
    return float(-log_p[valid].sum() / num_tokens[valid].sum()) if valid.any() else float("nan")


def _steps(step_scores: Sequence[Sequence[float]], step_correct: Sequence[Sequence[Any]]) -> list[tuple]:
    """Per response, ``(scores, correct)`` float64/bool arrays of equal length (responses may differ in length)."""
    if len(step_scores) != len(step_correct):
        raise ValueError(f"Got {len(step_scores)} score lists for {len(step_correct)} label lists.")
    rows = [(np.asarray(s, dtype=np.float64), np.asarray(c, dtype=bool)) for s, c in zip(step_scores, step_correct)]
    if any(s.shape != c.shape or s.ndim != 1 for s, c in rows):
        raise ValueError("Each response needs one score per step label (`step_scores[i]` and `step_correct[i]`).")
    return rows


def step_auroc(step_scores: Sequence[Sequence[float]], step_correct: Sequence[Sequence[Any]]) -> float:
    """AUROC of step scores for locally correct (positive) vs wrong steps, pooled over responses; ties count 1/2.

    The pooled ``step_auroc`` of the lab's ``prm_metrics.step_metrics``, for responses of any number of steps.
    """
    rows = _steps(step_scores, step_correct)
    scores, correct = np.concatenate([s for s, _ in rows]), np.concatenate([c for _, c in rows])
    return auroc(scores[correct], scores[~correct])


def first_error_localisation(step_scores: Sequence[Sequence[float]], step_correct: Sequence[Sequence[Any]]) -> float:
    """Share of single-error responses whose lowest-scored step is the wrong one (ties split the credit).

    ``localisation`` of the lab's ``prm_metrics.step_metrics``; responses with no error or several are skipped
    (``nan`` if none has exactly one).
    """
    located = [
        tie_credit(s[None], ~c[None], "min")[0] for s, c in _steps(step_scores, step_correct) if (~c).sum() == 1
    ]
    return float(np.mean(located)) if located else float("nan")


# ----- generation quality on any text

Tokenize = Callable[[str], Sequence[Any]]


def tokenize_texts(texts: Sequence[str], tokenizer: Any = None) -> list[list[Any]]:
    """Tokens of each text: whitespace words by default, else a callable's output or an HF ``tokenizer.tokenize``."""
    if tokenizer is None:
        return [text.split() for text in texts]
    split = tokenizer.tokenize if hasattr(tokenizer, "tokenize") else tokenizer
    return [list(split(text)) for text in texts]


def _ngrams(tokens: Sequence[Any], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[Any]], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (corpus-level distinct-n, Li et al. 2016); ``nan`` if none."""
    grams = [g for tokens in token_lists for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(token_lists: Sequence[Sequence[Any]], n: int = 4) -> float:
    """Mean over texts of ``1 - distinct n-grams / n-grams`` inside the text (seq-rep-n, Welleck et al. 2019).

    Texts shorter than ``n`` tokens have no n-gram and are skipped; ``nan`` if every text is.
    """
    rates = [1.0 - len(set(g)) / len(g) for g in (_ngrams(tokens, n) for tokens in token_lists) if g]
    return float(np.mean(rates)) if rates else float("nan")


def mean_length(token_lists: Sequence[Sequence[Any]]) -> float:
    """Mean number of tokens per text."""
    return float(np.mean([len(tokens) for tokens in token_lists])) if token_lists else float("nan")


def generation_quality(
    texts: Sequence[str], tokenizer: Any = None, ns: Sequence[int] = (1, 2), repetition_n: int = 4
) -> dict[str, float]:
    """``distinct_{n}`` for each ``n`` in ``ns``, ``repetition_rate`` (seq-rep-``repetition_n``) and ``mean_length``.

    ``tokenizer``: ``None`` splits on whitespace; else a callable ``str -> tokens`` or a Hugging Face tokenizer.
    """
    token_lists = tokenize_texts(texts, tokenizer)
    out = {f"distinct_{n}": distinct_n(token_lists, n) for n in ns}
    out["repetition_rate"] = repetition_rate(token_lists, repetition_n)
    out["mean_length"] = mean_length(token_lists)
    return out


def perplexity(
    model: torch.nn.Module | str | os.PathLike,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Perplexity of ``texts`` under a scorer causal LM (a model, a local path, or a PEFT adapter path).

    Tokens are the tokenizer's (special tokens added); the first token of a text is context only. ``tokenizer=None``
    loads the model's own from its path.

    Returns:
        ``perplexities`` (per text, ``exp`` of its mean token NLL), ``mean_perplexity`` (their mean, as the Hub's
        ``perplexity`` metric reports) and ``perplexity`` (``exp`` of the token-mean NLL over all texts).
    """
    from .scoring import _load_model, _load_tokenizer, sequence_log_likelihood  # scoring: models; here: maths

    source = model
    if not isinstance(model, torch.nn.Module):
        model = _load_model(str(model), model_kwargs or {})
    if tokenizer is None:
        tokenizer = _load_tokenizer(source, model)
    log_p, num_tokens = sequence_log_likelihood(model, list(texts), tokenizer, batch_size=batch_size)
    per_text = torch.exp(-log_p / num_tokens).tolist()
    return {
        "perplexities": per_text,
        "mean_perplexity": float(np.mean(per_text)),
        "perplexity": math.exp(-log_p.sum().item() / num_tokens.sum().item()),
    }
