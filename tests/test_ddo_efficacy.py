"""Efficacy, one seed: on a known sparse bigram P, DDO sharpens an over-dispersed reference (ALGORITHMS.md 5(g)).

Protocol of ``trl_likelihood.lab.experiments.ddo_vs_mle``, one round, shortened to run in about a minute on 2 CPU
cores: fixed-length sequences (16 tokens, no EOS, so real and fake lengths match and DDO cannot learn "short = fake"),
a Qwen2 with hidden 32, a reference trained by MLE with label smoothing 0.1 (over-dispersed: DDO's mode-covering
premise), then two arms from it for the same 150 steps, same data order and seed: continued MLE and DDO (alpha 1,
beta 0.5, 64 real rows and 64 fresh fakes per step). The 3-seed version, 1-3 rounds and the negative control (a
reference at its MLE optimum) are in ``benchmarks/efficacy_ddo.py``; a one-seed, two-round version of that control
is the last slow test here.

Measured on this configuration (seed 0, 1 thread; reference -> MLE / DDO): invalid-sample rate 0.673 -> 0.205 /
0.154, mass on impossible tokens 0.0685 -> 0.0141 / 0.0103, JS 0.0306 -> 0.0092 / 0.0114, held-out NLL 1.736 ->
1.677 / 1.690, distinct valid bigrams 270 -> 261 / 262, sample token entropy 3.091 -> 3.050 / 3.045 nats (P's own
samples: 250 and 3.041). So DDO is ahead of MLE on the precision metrics and behind on JS and NLL, as the calibration
in ALGORITHMS.md 5(g) found. Over seeds 0-2 (the benchmark), DDO vs MLE after this one round: invalid rate
-21.5 +- 3.1 %, impossible mass -25.2 +- 1.6 %, JS +23.8 +- 1.6 %, NLL +0.7 +- 0.1 %; hence the 0.9 thresholds. The
advantage does not survive more rounds (after 2 and 3 rounds MLE catches up), so only one round is asserted.
"""

from __future__ import annotations

import pytest
import torch

from trl_likelihood.lab import EOS_ID, BigramTask
from trl_likelihood.lab.experiments import (
    DDO_OPTIMAL_CONTROL,
    ControlMargins,
    DDOSetup,
    ddo_control_failures,
    ddo_vs_mle,
)
from trl_likelihood.lab.metrics import sample_diversity

SEED, STEPS = 0, 150


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a loaded 2-core machine an OpenMP pair spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    setup = DDOSetup(seed=SEED, num_rounds=1, round_steps=STEPS)
    out = ddo_vs_mle(setup, output_dir=str(tmp_path_factory.mktemp("ddo-efficacy")))
    m, task = out["metrics"], out["task"]
    results = {"reference": m["reference"], "mle": m[f"mle@{STEPS}"], "ddo": m[f"ddo@{STEPS}"]}
    results["p"] = sample_diversity(task.sample(setup.eval_samples, SEED + 1001), task)  # P's own samples
    print({arm: {k: round(v, 4) for k, v in r.items()} for arm, r in results.items()})
    return {"metrics": results, "trainers": out["trainers"]}


@pytest.mark.slow
def test_ddo_sharpens_the_over_dispersed_reference(runs):
    ref, ddo = runs["metrics"]["reference"], runs["metrics"]["ddo"]
    assert ddo["invalid_rate"] <= 0.5 * ref["invalid_rate"], (ddo["invalid_rate"], ref["invalid_rate"])
    assert ddo["zero_mass"] <= 0.5 * ref["zero_mass"], (ddo["zero_mass"], ref["zero_mass"])


@pytest.mark.slow
def test_ddo_does_not_collapse_diversity(runs):
    """Raw distinct bigrams fall with the invalid ones; the valid ones and the token entropy must stay, both near the
    reference (whose over-dispersion covers even more rare valid bigrams than P's own samples do) and near P."""
    ref, ddo, p = runs["metrics"]["reference"], runs["metrics"]["ddo"], runs["metrics"]["p"]
    assert ddo["distinct_valid_bigrams"] >= 0.9 * ref["distinct_valid_bigrams"], (ddo, ref)
    assert ddo["token_entropy"] >= ref["token_entropy"] - 0.1, (ddo["token_entropy"], ref["token_entropy"])
    assert ddo["distinct_valid_bigrams"] >= 0.95 * p["distinct_valid_bigrams"], (ddo, p)
    assert ddo["token_entropy"] >= p["token_entropy"] - 0.05, (ddo["token_entropy"], p["token_entropy"])


@pytest.mark.slow
def test_ddo_beats_continued_mle_on_precision(runs):
    """Same steps, same data: DDO is ahead on invalid rate and impossible mass (it is behind on JS and NLL)."""
    mle, ddo = runs["metrics"]["mle"], runs["metrics"]["ddo"]
    assert ddo["invalid_rate"] <= 0.9 * mle["invalid_rate"], (ddo["invalid_rate"], mle["invalid_rate"])
    assert ddo["zero_mass"] <= 0.9 * mle["zero_mass"], (ddo["zero_mass"], mle["zero_mass"])


@pytest.mark.slow
def test_fakes_match_real_lengths_and_arms_differ(runs):
    """Guards the comparison: fixed-length fakes (no length cue), and two arms that really trained differently."""
    logs = {k: v for entry in runs["trainers"]["ddo"].state.log_history for k, v in entry.items()}
    assert logs["ddo/real_length"] == 16  # every real sequence: 16 scored tokens, no EOS
    assert logs["ddo/fake_length"] >= 15  # a fake stops early only where the reference samples the (impossible) EOS
    mle, ddo = (dict(runs["trainers"][arm].model.named_parameters()) for arm in ("mle", "ddo"))
    assert max((mle[n] - ddo[n]).abs().max().item() for n in mle) > 1e-3


def test_fixed_length_task_has_no_eos():
    """The task behind the efficacy runs (fast): exactly ``max_len`` tokens, EOS impossible, defaults untouched."""
    task, variable = BigramTask(max_len=16, seed=3, eos=False), BigramTask(max_len=16, seed=3)
    assert task.transition[:, EOS_ID].sum() == 0
    assert torch.allclose(task.transition.sum(1)[task.context_ids], torch.ones(len(task.context_ids), dtype=float))
    same_support = (task.transition[:, EOS_ID + 1 :] > 0) == (variable.transition[:, EOS_ID + 1 :] > 0)
    assert same_support[task.context_ids].float().mean() > 0.95  # the same draws, EOS entry zeroed
    ids = task.sample(200, seed=0)
    assert ids.shape == (200, 17) and bool((ids[:, 1:] > EOS_ID).all())
    log_p, num_tokens = task.log_prob(ids)
    assert bool(torch.isfinite(log_p).all()) and bool((num_tokens == 16).all())
    ids[0, 5] = EOS_ID
    assert task.log_prob(ids)[0][0] == -torch.inf
    assert task.dataset(4, seed=0).column_names == ["input_ids"]  # SFT would append an EOS to text
    assert variable.dataset(4, seed=0).column_names == ["text"]


def test_sample_diversity_counts_valid_bigrams():
    task = BigramTask(max_len=16, seed=3, eos=False)
    gold = sample_diversity(task.sample(500, seed=0), task)
    assert gold["distinct_bigrams"] == gold["distinct_valid_bigrams"] > 100
    one = torch.tensor([[1, *[task.context_ids[1]] * 16]])  # a single repeated token
    collapsed = sample_diversity(one, task)
    assert collapsed["token_entropy"] == 0.0 and collapsed["distinct_bigrams"] == 2
    assert gold["token_entropy"] > 2.0


CONTROL_STEPS = 50  # per round, 2 rounds: a round switch at a reference that is already at its optimum


@pytest.mark.slow
def test_ddo_does_no_harm_at_an_mle_optimal_reference(tmp_path):
    """The negative control, one seed: from a reference at (near) P's within-family MLE optimum, DDO with the
    recommended settings (``DDO_OPTIMAL_CONTROL``: fine-tuning lr 1e-4, beta 2, fresh rows) is no worse than that
    reference and than continued MLE by more than ``ControlMargins``, after either round. Shortened from the
    benchmark's ``--optimal_control`` (1,000 reference steps on 260,000 rows, 3 x 150 steps, 3 seeds): the reference
    takes 400 steps on 102,400 fresh rows (one pass, cosine) and the arms 2 x 50 steps. That reference is less close to
    the optimum than the benchmark's (JS 0.0085 vs 0.0022), so continued MLE still improves it a little; measured
    (seed 0) JS 0.00852 -> MLE 0.00837 / DDO 0.00850, invalid rate 0.292 -> 0.277 / 0.282, NLL unchanged."""
    control = DDO_OPTIMAL_CONTROL | dict(control_steps=400, control_train_size=400 * 256)
    setup = DDOSetup(seed=SEED, num_rounds=2, round_steps=CONTROL_STEPS, **control)
    metrics = ddo_vs_mle(setup, output_dir=str(tmp_path), control=True, main=False)["metrics"]
    print({arm: {k: round(v, 5) for k, v in m.items()} for arm, m in metrics.items()})
    assert set(metrics) == {"control", *(f"control-{a}@{s}" for a in ("mle", "ddo") for s in (50, 100))}
    assert metrics["control-ddo@100"] != metrics["control"]  # DDO really trained
    assert ddo_control_failures(metrics, steps=[CONTROL_STEPS, 2 * CONTROL_STEPS]) == []


def test_control_check_flags_what_is_worse():
    """``ddo_control_failures`` (fast): margins against the reference and against MLE, each metric's direction."""
    base = dict(js=0.002, nll=1.65, zero_mass=0.006, invalid_rate=0.10, distinct_valid_bigrams=250, token_entropy=3.0)
    metrics = {"control": base, "control-mle@10": base, "control-ddo@10": dict(base)}
    assert ddo_control_failures(metrics, [10]) == []
    metrics["control-ddo@10"] |= dict(js=0.00215, invalid_rate=0.12, token_entropy=3.2)  # within margins, or better
    assert ddo_control_failures(metrics, [10]) == []
    metrics["control-ddo@10"] |= dict(js=0.0026, distinct_valid_bigrams=200)
    failures = ddo_control_failures(metrics, [10])
    assert len(failures) == 3 and all(f.startswith("step 10: ") for f in failures), failures  # JS twice, bigrams once
    metrics["control-mle@10"] = base | dict(js=0.0025)  # MLE drifted too: only the reference's margin is left
    assert ddo_control_failures(metrics, [10], ControlMargins(distinct_valid_bigrams=0.25)) == [
        "step 10: JS vs reference = 0.0026, limit 0.0023"
    ]
