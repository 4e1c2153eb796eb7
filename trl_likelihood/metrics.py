"""Small metrics computed on tensors during training and evaluation (no sklearn dependency)."""

from __future__ import annotations

import torch


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
