"""Implicit vs explicit PRMs at one label budget, one seed (ALGORITHMS.md 4(g)); 3 seeds and 4 budgets in
benchmarks/prm_comparison.py.

Every arm sees the same 1,000 solver responses and trains the same passes from the same pi_ref; the explicit PRM (a
token classifier on pi_ref's body, new head) gets exact step labels or Math-Shepherd labels (any of K = 4 pi_ref
continuations reaches the answer). Measured (seed 0): bug-cell step AUROC implicit CE 0.998, DPO 1.000, explicit exact
0.57, Math-Shepherd 0.48 (32 optimizer steps are too few for the new head; over 3 seeds exact labels reach 0.87 at
10k labels, and 0.91 at 3k with 4x the epochs), log pi_ref 0.000, random 0.49; first-error F1 implicit CE 0.96,
explicit exact 0.22, random 0.17; best-of-16 implicit CE 0.80 vs majority vote 0.38. About 80 s of CPU (215 s wall
on a 2-core machine at load 5-7).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from trl_likelihood.lab.modarith import ModArithTask, load_reference
from trl_likelihood.lab.prm_comparison import ARMS, ComparisonSetup, compare_prms, math_shepherd_labels

pytestmark = pytest.mark.slow

BUDGET, K = 1000, 4
SETUP = ComparisonSetup(seed=0, budgets=(BUDGET,), shepherd_k=K, num_eval=600, num_dev=300, num_prompts=100)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, str]:
    output_dir = str(tmp_path_factory.mktemp("prm-comparison"))
    results = compare_prms(SETUP, output_dir)
    print({key: {m: round(v, 3) for m, v in value.items()} for key, value in results.items()})
    return results, output_dir


def test_controls(run):
    """The random scorer is at chance and pi_ref prefers the bug values (else bug cells test nothing)."""
    results = run[0]
    assert abs(results["random"]["step_auroc"] - 0.5) < 0.05 and abs(results["random"]["bug_auroc"] - 0.5) < 0.1
    assert results["log_pi_ref"]["bug_auroc"] <= 0.1
    assert 0.6 <= results["reference"]["bug_value_prob"] <= 0.8


def test_labelling_costs(run):
    """Outcome labels cost B labels; exact step labels B x K_steps; Math-Shepherd B (K_steps - 1) k rollouts, each a
    suffix of pi_ref samples, and every arm but DPO (pairs) takes the same optimizer steps."""
    results, steps = run[0], ModArithTask().num_ops
    implicit, exact, shepherd = (
        results[f"{arm}@{BUDGET}"] for arm in ("implicit_ce", "explicit_exact", "explicit_shepherd")
    )
    assert (implicit["outcome_labels"], implicit["step_labels"], implicit["sampled_tokens"]) == (BUDGET, 0, 0)
    assert (exact["outcome_labels"], exact["step_labels"], exact["sampled_tokens"]) == (0, BUDGET * steps, 0)
    assert shepherd["rollouts"] == BUDGET * (steps - 1) * K
    assert shepherd["sampled_tokens"] == BUDGET * K * steps * (steps - 1) // 2  # continuations after step t: K - t
    assert shepherd["outcome_labels"] == BUDGET + shepherd["rollouts"] and shepherd["step_labels"] == 0
    expected_steps = math.ceil(BUDGET / SETUP.batch_size) * SETUP.epochs
    assert implicit["train_steps"] == exact["train_steps"] == shepherd["train_steps"] == expected_steps
    assert results[f"implicit_dpo@{BUDGET}"]["train_steps"] < expected_steps  # fewer pairs than responses here


def test_math_shepherd_labels_mark_correct_prefixes(run):
    """A step is labelled good when a continuation reaches the answer: nearly always while every step so far is
    right, almost never after a wrong one (errors propagate); the last step's label is the outcome."""
    task = ModArithTask(seed=SETUP.seed)
    reference = load_reference(os.path.join(run[1], "reference"))[0]
    rollouts = task.solve(400, seed=77)
    labels, cost = math_shepherd_labels(task, reference, rollouts, k=K, seed=3)
    prefix_right = np.cumprod(rollouts.correct, axis=1).astype(bool)
    np.testing.assert_array_equal(labels[:, -1], rollouts.label)
    assert labels[:, :-1][prefix_right[:, :-1]].mean() > 0.7  # measured 0.81
    assert labels[:, :-1][~prefix_right[:, :-1]].mean() < 0.15  # measured 0.07; 0.27 when continuing one step early
    assert cost["rollouts"] == 400 * (task.num_ops - 1) * K


def test_implicit_prm_beats_controls_and_explicit_at_equal_budget(run):
    results = run[0]
    ce, dpo = results[f"implicit_ce@{BUDGET}"], results[f"implicit_dpo@{BUDGET}"]
    for prm in (ce, dpo):
        assert prm["bug_auroc"] >= results["log_pi_ref"]["bug_auroc"] + 0.8
    assert ce["first_error_f1"] >= results["random"]["first_error_f1"] + 0.4
    assert ce["bon16_min"] >= results["baselines"]["bon16_majority"] + 0.1
    for arm in ("explicit_exact", "explicit_shepherd"):
        assert ce["bug_auroc"] >= results[f"{arm}@{BUDGET}"]["bug_auroc"] + 0.3
        assert ce["first_error_f1"] >= results[f"{arm}@{BUDGET}"]["first_error_f1"] + 0.3


def test_every_arm_scored(run):
    results = run[0]
    for arm in ARMS:
        metrics = results[f"{arm}@{BUDGET}"]
        assert all(math.isfinite(metrics[m]) for m in ("bug_auroc", "step_auroc", "first_error_f1", "bon16_min"))
