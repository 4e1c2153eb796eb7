"""ProcessBench-style evaluation of a process reward model: from step scores and a threshold, name the first wrong
step of each response (or none), and score that against step labels.

ProcessBench (Zheng et al., 2024, arXiv:2412.06559) asks for the earliest erroneous step of each solution, or "none"
when every step is right; it reports the accuracy on erroneous and on correct solutions and their harmonic mean (F1),
so a judge that calls everything correct (or everything wrong) scores 0. A PRM becomes such a judge with a threshold:
the first step scored below it is the first error. The threshold is picked on a dev split (``best_threshold``).

Everything here is a pure function of step scores (any scale: implicit rewards, classifier probabilities) and step
labels (TRL's stepwise ``labels``: one bool per step; steps after the first wrong one may be labelled anyhow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .metrics import binary_auroc
from .stepwise_data import validate_stepwise_dataset

NO_ERROR = -1


def first_error(labels: Sequence[Any]) -> int:
    """Index of the first wrong step, ``NO_ERROR`` when every step is right."""
    return next((i for i, label in enumerate(labels) if not label), NO_ERROR)


def predicted_first_error(step_scores: Sequence[float], threshold: float) -> int:
    """Index of the first step scored below ``threshold``, ``NO_ERROR`` when none is."""
    return next((i for i, score in enumerate(step_scores) if score < threshold), NO_ERROR)


def _harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def first_error_scores(
    step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[Any]], threshold: float
) -> dict[str, float]:
    """``error_accuracy`` (erroneous responses whose first wrong step is found exactly), ``correct_accuracy``
    (correct responses called correct), ``f1`` (their harmonic mean), with the counts; ``nan`` for an accuracy with
    no response of its kind (and then for ``f1``)."""
    _check(step_scores, step_labels)
    hits = {"error": [], "correct": []}
    for scores, labels in zip(step_scores, step_labels):
        truth = first_error(labels)
        hits["correct" if truth == NO_ERROR else "error"].append(predicted_first_error(scores, threshold) == truth)
    error, correct = (float(np.mean(hits[k])) if hits[k] else float("nan") for k in ("error", "correct"))
    return {
        "error_accuracy": error,
        "correct_accuracy": correct,
        "f1": _harmonic_mean(error, correct) if hits["error"] and hits["correct"] else float("nan"),
        "num_erroneous": len(hits["error"]),
        "num_correct": len(hits["correct"]),
        "threshold": float(threshold),
    }


def best_threshold(step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[Any]]) -> float:
    """The threshold with the highest F1 on these responses (a dev split), ties to the lowest.

    Each response is judged right for the thresholds in one interval: an erroneous one with first error ``e`` for
    ``t`` in ``(s_e, min(s_0..s_{e-1})]``, a correct one for ``t <= min(s)``. Both accuracies only grow when ``t``
    moves up to the nearest right end of an interval, so the best F1 is at one of those ends; each is counted in
    O(log n) from sorted ends.
    """
    _check(step_scores, step_labels)
    error_low, error_high, correct_high = [], [], []
    for scores, labels in zip(step_scores, step_labels):
        scores = np.asarray(scores, dtype=np.float64)
        truth = first_error(labels)
        if truth == NO_ERROR:
            correct_high.append(scores.min())
        else:
            high = scores[:truth].min() if truth > 0 else np.inf
            if scores[truth] < high:  # else no threshold finds this error first
                error_low.append(scores[truth])
                error_high.append(high)
    if not error_high and not correct_high:
        return 0.0
    candidates = np.unique(np.concatenate([error_high, correct_high]))
    low, high, correct = (np.sort(np.asarray(v, dtype=np.float64)) for v in (error_low, error_high, correct_high))
    n_error = sum(first_error(labels) != NO_ERROR for labels in step_labels)
    n_correct = len(step_labels) - n_error
    # intervals (a, b] holding t: #{b >= t} - #{a >= t}; correct ones (-inf, b]: #{b >= t}
    found = (len(high) - np.searchsorted(high, candidates, "left")) - (
        len(low) - np.searchsorted(low, candidates, "left")
    )
    kept = len(correct) - np.searchsorted(correct, candidates, "left")
    error_acc = found / max(n_error, 1)
    correct_acc = kept / max(n_correct, 1)
    if n_error and n_correct:
        objective = np.where(
            error_acc + correct_acc > 0, 2 * error_acc * correct_acc / np.maximum(error_acc + correct_acc, 1e-300), 0.0
        )
    else:
        objective = error_acc + correct_acc
    return float(candidates[int(np.argmax(objective))])


def _check(step_scores: Sequence[Sequence[float]], step_labels: Sequence[Sequence[Any]]) -> None:
    if len(step_scores) != len(step_labels):
        raise ValueError(f"{len(step_scores)} responses of step scores but {len(step_labels)} of step labels.")
    for row, (scores, labels) in enumerate(zip(step_scores, step_labels)):
        if len(scores) != len(labels) or not len(scores):
            raise ValueError(f"response {row}: {len(scores)} step scores for {len(labels)} step labels.")


def stepwise_columns(dataset: Any, where: str = "dataset") -> tuple[list[Any], list[list[str]], list[list[Any]]]:
    """Prompts, steps and step labels of a stepwise-supervision dataset (a ``datasets.Dataset`` or a list of rows),
    every row checked first."""
    validate_stepwise_dataset(dataset, where)
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    return [r["prompt"] for r in rows], [r["completions"] for r in rows], [r["labels"] for r in rows]


def step_scores(scorer: Any, dataset: Any, where: str = "dataset") -> tuple[list[list[float]], list[list[Any]]]:
    """Every response's step rewards under ``scorer`` (an ``ImplicitPRM``, or any object with its ``score``), with
    the step labels, in row order."""
    prompts, steps, labels = stepwise_columns(dataset, where)
    return [r.step_rewards for r in scorer.score(prompts, steps)], labels


def evaluate_prm(
    scorer: Any, dataset: Any, dev_dataset: Any = None, threshold: float | None = None
) -> dict[str, float]:
    """ProcessBench-style scores of ``scorer`` on ``dataset`` (stepwise), with the threshold picked on
    ``dev_dataset`` (or given), plus the step AUROC pooled over every labelled step (threshold-free)."""
    if threshold is None:
        if dev_dataset is None:
            raise ValueError("Pick the threshold on held-out data: pass `dev_dataset`, or a `threshold`.")
        threshold = best_threshold(*step_scores(scorer, dev_dataset, "dev_dataset"))
    scores, labels = step_scores(scorer, dataset)
    result = first_error_scores(scores, labels, threshold)
    flat_scores = torch.tensor([s for row in scores for s in row], dtype=torch.float64)
    flat_labels = torch.tensor([bool(x) for row in labels for x in row])
    result["step_auroc"] = binary_auroc(flat_scores, flat_labels)
    return result
