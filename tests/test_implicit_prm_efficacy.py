"""Efficacy, one seed: outcome labels alone give step-level credit (ALGORITHMS.md 4(g)); 3 seeds in benchmarks/.

The task has bug cells, errors the reference itself prefers (pi_ref(bug value) ~0.7), so scoring steps by log pi_ref
(the control) ranks them backwards; only the outcome labels can reveal them. A PRM that learned nothing scores like
the reference ratio at zero: constant rewards, AUROC 0.5. Measured (seed 0, loaded CPU, ~1 min): bug-cell step AUROC
1.000 vs control 0.000; pooled step AUROC 0.989 vs 0.960; first-error localisation 0.987 (chance 1/6); best-of-16
by min step reward 87.8 % vs majority vote 47.5 %, random 43.2 %, oracle 94.6 %; random scorer step AUROC 0.489.
"""

from __future__ import annotations

import pytest

from trl_likelihood.lab.experiments import PRMSetup, implicit_prm_vs_controls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = implicit_prm_vs_controls(PRMSetup(seed=0), str(tmp_path_factory.mktemp("prm-efficacy")))
    print({k: v for k, v in out.items() if isinstance(v, dict)})
    return out


def test_metric_code_sanity(results):
    """A random scorer sits at chance; the reference really prefers the bug values (else the task tests nothing)."""
    assert abs(results["random"]["step_auroc"] - 0.5) < 0.05
    assert 0.6 <= results["reference"]["bug_value_prob"] <= 0.8
    assert results["log_pi_ref"]["bug_auroc"] <= 0.1


def test_prm_finds_errors_the_reference_prefers(results):
    prm, control = results["implicit_prm"], results["log_pi_ref"]
    assert prm["bug_auroc"] >= control["bug_auroc"] + 0.7
    assert prm["step_auroc"] >= 0.9 and prm["step_auroc"] > control["step_auroc"]
    assert prm["localisation"] >= 0.8  # chance is 1/6


def test_prm_best_of_n_beats_selection_baselines(results):
    prm, base = results["implicit_prm"], results["baselines"]
    assert prm["bon16_min"] >= base["bon16_majority"] + 0.2
    assert prm["bon16_min"] >= base["bon16_random"] + 0.2
    assert prm["bon4_min"] >= base["bon4_majority"] + 0.1
    assert prm["bon16_min"] <= base["bon16_oracle"]


def test_training_moved_the_policy(results):
    steps = [h for h in results["trainer"].state.log_history if "loss" in h]
    assert steps[-1]["loss"] < 0.6 and steps[-1]["prm/accuracy"] > 0.8  # started at log 2 and chance
