"""The implicit-PRM lab task (ALGORITHMS.md 4(g)): the solver and its ground truth, the token/step mapping a PRM scorer
relies on, the metrics against scorers whose answer is known, and (slow) the calibration sanity checks on a trained
pi_ref."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from transformers.modeling_outputs import CausalLMOutputWithPast

from trl_likelihood.lab.modarith import (
    REFERENCE_MARKER,
    ModArithTask,
    load_reference,
    reference_model,
    train_reference,
)
from trl_likelihood.lab.prm_metrics import (
    LogLikelihoodScorer,
    OracleScorer,
    RandomScorer,
    best_of_n_accuracy,
    best_of_n_baselines,
    reference_metrics,
    sample_candidates,
    step_metrics,
)
from trl_likelihood.metrics import auroc


class SolverOracle(torch.nn.Module):
    """The solver's exact next-token distribution behind a causal-LM interface: pi_ref with nothing left to learn."""

    def __init__(self, task: ModArithTask) -> None:
        super().__init__()
        self.task = task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        task, ids = self.task, input_ids
        k_ops, digit0, num_ids = task.num_ops, task.token_id["0"], len(task.symbols)
        logits = torch.zeros(*ids.shape, num_ids, dtype=torch.float64)  # uniform over the prompt
        for p in range(ids.shape[1]):
            r = p + 1 - (k_ops + 3)  # index in the response of the token that position p predicts
            if r < 0:
                continue
            k, kind = divmod(r, 3)
            logits[:, p] = -50.0
            if kind == 0 and k < k_ops:  # an operand, copied from the prompt
                logits[torch.arange(len(ids)), p, ids[:, 2 + k]] = 0.0
            elif kind == 1:  # a value: the solver's distribution given the cell
                prev = ids[:, 1] if k == 0 else ids[:, p - 2]
                probs = task.value_probs((prev - digit0).numpy(), (ids[:, p] - digit0).numpy())
                logits[:, p, digit0 : digit0 + task.modulus] = torch.from_numpy(probs).log()
            elif kind == 2:
                logits[:, p, task.token_id[";"] if k < k_ops - 1 else task.tokenizer().eos_token_id] = 0.0
        return CausalLMOutputWithPast(logits=logits)


@pytest.fixture(scope="module")
def task() -> ModArithTask:
    return ModArithTask()


def test_noiseless_solver_adds_correctly():
    task = ModArithTask(bug_fraction=0.0, slip_prob=0.0)
    r = task.solve(500, seed=1)
    expected = (r.x0[:, None] + np.cumsum(r.ops, axis=1)) % 10
    np.testing.assert_array_equal(r.values, expected)
    assert r.correct.all() and r.label.all() and not r.bug_cell.any()


def test_bug_cells_and_noise_rates(task):
    cells = task.bug_value >= 0
    assert cells.sum() == 15  # 15 % of the 100 (v_prev, o) cells
    prev, op = np.nonzero(cells)
    assert (task.bug_value[prev, op] != (prev + op) % 10).all()  # a bug value is always wrong
    r = task.solve(20_000, seed=2)
    assert r.bug_cell.mean() == pytest.approx(0.15, abs=0.01)  # digits are uniform, so cells are visited uniformly
    assert r.bug_error[r.bug_cell].mean() == pytest.approx(0.7, abs=0.01)
    assert (r.correct | r.bug_error)[r.bug_cell].all()  # in a bug cell: the bug value or the right one, no slip
    assert (~r.correct)[~r.bug_cell].mean() == pytest.approx(0.05, abs=0.005)
    assert not r.bug_error[~r.bug_cell].any()


def test_labels_are_local_and_errors_propagate(task):
    # x0 = 3, ops 4 then 5; the true answer is (3 + 4 + 5) % 10 = 2
    r = task.evaluate(np.array([3, 3, 3]), np.array([[4, 5]] * 3), np.array([[7, 2], [7, 1], [8, 3]]))
    np.testing.assert_array_equal(r.correct, [[True, True], [True, False], [False, True]])  # 8 + 5 = 3 is right
    np.testing.assert_array_equal(r.label, [True, False, False])
    np.testing.assert_array_equal(r.right, [[7, 2], [7, 2], [7, 3]])  # the right value follows the written one
    s = task.solve(2000, seed=3)
    assert np.array_equal(s.label, s.values[:, -1] == (s.x0 + s.ops.sum(1)) % 10)
    assert s.label[s.correct.all(1)].all()


def test_seeded(task):
    a, b = task.solve(300, seed=4), task.solve(300, seed=4)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("x0", "ops", "values"))
    assert not np.array_equal(a.values, task.solve(300, seed=5).values)
    assert np.array_equal(ModArithTask(seed=0).bug_value, task.bug_value)
    assert not np.array_equal(ModArithTask(seed=1).bug_value, task.bug_value)
    assert task.step_dataset(50, seed=6).to_dict() == task.step_dataset(50, seed=6).to_dict()


def test_datasets_are_trl_formats(task):
    sft, outcome, steps = task.sft_dataset(40, 7), task.outcome_dataset(40, 7), task.step_dataset(40, 7)
    assert sft.column_names == ["prompt", "completion"]
    assert outcome.column_names == ["prompt", "completion", "label"] and outcome["prompt"] == sft["prompt"]
    row = steps[0]
    assert row["completion"] == task.step_separator.join(row["steps"]) and len(row["steps"]) == 6
    assert all(isinstance(x, bool) for x in outcome["label"]) and 0 < sum(outcome["label"]) < 40
    parsed = task.parse(steps["prompt"], steps["steps"])
    np.testing.assert_array_equal(parsed.correct, steps["step_correct"])
    np.testing.assert_array_equal(parsed.bug_error, steps["bug_error"])
    np.testing.assert_array_equal(parsed.label, steps["label"])


def test_tokenizer_offsets_map_steps(task):
    tok, data = task.tokenizer(), task.step_dataset(20, 8)
    texts = [p + task.step_separator.join(s) for p, s in zip(data["prompt"], data["steps"])]
    enc = tok(texts, return_offsets_mapping=True)
    np.testing.assert_array_equal(enc["input_ids"], task.encode(task.solve(20, 8)).numpy())
    for text, ids, offsets, prompt, steps in zip(
        texts, enc["input_ids"], enc["offset_mapping"], data["prompt"], data["steps"]
    ):
        assert [text[a:b] for a, b in offsets[1:]] == [tok.convert_ids_to_tokens(i) for i in ids[1:]]
        response = [text[a:b] for a, b in offsets if a >= len(prompt)]
        assert " ".join(response) == task.step_separator.join(steps)
    prompt_ids = tok(data["prompt"][0])["input_ids"]  # SFTTrainer's prompt/completion split is a clean prefix
    full_ids = tok(data["prompt"][0] + data["completion"][0] + tok.eos_token)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids and full_ids[-1] == tok.eos_token_id
    assert len(full_ids) == task.seq_len


def test_auroc_matches_scipy():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 300).astype(float), rng.integers(0, 4, 200).astype(float)  # many ties
    expected = mannwhitneyu(pos, neg).statistic / (300 * 200)
    assert auroc(pos, neg) == pytest.approx(expected, rel=1e-12)
    assert auroc([1.0, 2.0], [0.0]) == 1.0 and auroc([0.0], [1.0, 2.0]) == 0.0 and auroc([1.0], [1.0]) == 0.5
    assert np.isnan(auroc([], [1.0]))


def test_metrics_on_known_scorers(task):
    data = task.step_dataset(4000, seed=9)
    oracle = step_metrics(OracleScorer(task), data)
    assert all(v == 1.0 for k, v in oracle.items() if k != "outcome_auroc"), oracle
    assert oracle["outcome_auroc"] > 0.9  # cancelling errors make a few wrong-step responses correct
    reverse = step_metrics(OracleScorer(task, wrong_reward=1.0), data)
    assert all(v == 0.0 for k, v in reverse.items() if k != "outcome_auroc"), reverse
    rand = step_metrics(RandomScorer(seed=0), data)
    for key in ("step_auroc", "bug_auroc", "slip_auroc", "outcome_auroc"):
        assert rand[key] == pytest.approx(0.5, abs=0.05), (key, rand)
    assert rand["localisation"] == pytest.approx(1 / 6, abs=0.05)
    constant = step_metrics(lambda prompts, steps: [np.zeros(len(s)) for s in steps], data)
    assert constant["step_auroc"] == 0.5 and constant["localisation"] == pytest.approx(1 / 6, rel=1e-12)  # ties split
    with pytest.raises(ValueError, match="one reward per step"):
        step_metrics(lambda prompts, steps: [np.zeros(2) for _ in steps], data)


def test_step_metrics_match_their_formulas_on_every_subset(task):
    data = task.step_dataset(2000, seed=21)
    rewards = np.random.default_rng(3).integers(0, 4, (len(data), task.num_ops)).astype(float)  # many ties
    metrics = step_metrics(lambda prompts, steps: list(rewards), data)
    correct, bug = np.array(data["step_correct"]), np.array(data["bug_error"])
    in_bug_cell, label = np.array(data["bug_cell"]), np.array(data["label"])
    slip, single = ~correct & ~bug, (~correct).sum(-1) == 1
    assert bug.any() and slip.any() and (single & bug.any(-1)).any() and (single & slip.any(-1)).any()
    lowest = rewards == rewards.min(-1, keepdims=True)
    located = (lowest & ~correct).sum(-1) / lowest.sum(-1)  # ties split the credit
    expected = {
        "step_auroc": mannwhitneyu(rewards[correct], rewards[~correct]).statistic / (correct.sum() * (~correct).sum()),
        "bug_auroc": auroc(rewards[in_bug_cell & correct], rewards[bug]),
        "slip_auroc": auroc(rewards[correct], rewards[slip]),
        "localisation": located[single].mean(),
        "localisation_bug": located[single & bug.any(-1)].mean(),
        "localisation_slip": located[single & slip.any(-1)].mean(),
        "outcome_auroc": auroc(rewards.sum(-1)[label], rewards.sum(-1)[~label]),
    }
    assert metrics == pytest.approx(expected, rel=1e-12)


def test_best_of_n_by_hand(task):
    # one prompt, four candidates; x0 = 0 and ops all 1, so the right final value is 6
    ops = np.ones((4, 6), dtype=int)
    good, bad5, bad7 = np.arange(1, 7), np.array([1, 2, 3, 4, 5, 5]), np.array([1, 2, 3, 4, 5, 7])
    cands = task.evaluate(np.zeros(4, dtype=int), ops, np.stack([bad5, good, bad5, bad7]))
    base = best_of_n_baselines(cands, n=4, ns=(2, 4))
    assert base == {
        "bon2_random": 0.5,
        "bon2_majority": 0.5,  # answers 5 and 6 tie one vote each
        "bon2_oracle": 1.0,
        "bon4_random": 0.25,
        "bon4_majority": 0.0,  # 5 wins with two votes
        "bon4_oracle": 1.0,
    }
    rewards = {0: [0, 0, 0, 0, 0, -3.0], 1: [-1.0, 0, 0, 0, 0, 0], 2: [0, 0, 0, 0, 0, -0.5], 3: [0, 0, 0, 0, 0, 5.0]}
    scores = best_of_n_accuracy(lambda p, s: [rewards[i] for i in range(4)], task, cands, n=4, ns=(2, 4))
    # min: -3, -1, -0.5, 0 -> candidate 3 (wrong); sum: -3, -1, -0.5, 5 -> candidate 3; among the first two: #1
    assert scores == {"bon2_min": 1.0, "bon2_sum": 1.0, "bon4_min": 0.0, "bon4_sum": 0.0}


def test_loglik_scorer_sums_each_steps_tokens(task):
    model = reference_model(task, hidden_size=16, seed=0).eval()  # untrained: every token has a different log-prob
    rollouts = task.solve(6, seed=10)
    ids = task.encode(rollouts)
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
    token_logps = logps.gather(-1, ids[:, 1:, None])[..., 0].numpy()
    # step k owns its operand, its value and the separator after it (none after the last), as ImplicitPRM.score
    start = task.num_ops + 3
    bounds = [start + 3 * k for k in range(task.num_ops)] + [ids.shape[1]]
    expected = np.stack([token_logps[:, a - 1 : b - 1].sum(1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
    scorer = LogLikelihoodScorer(model, task.tokenizer(), task.step_separator, batch_size=4)
    got = np.stack(scorer(task.prompt_texts(rollouts), task.step_texts(rollouts)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    mixed = scorer(task.prompt_texts(rollouts)[:2], [["3 4"], ["1 2", "0 0"]])  # other lengths: padding is unscored
    assert [len(r) for r in mixed] == [1, 2]


def test_implicit_prm_score_plugs_in(task):
    """``ImplicitPRM.score`` is a ``StepScorer``; its steps own the same tokens as the control's."""
    from trl_likelihood.scoring import ImplicitPRM

    policy, reference = (reference_model(task, hidden_size=16, seed=s).eval() for s in (1, 2))
    tok, data = task.tokenizer(), task.step_dataset(8, seed=14)[:]
    prm = ImplicitPRM(policy, reference, tok, beta=0.5, step_separator=task.step_separator, add_eos=False)
    got = np.stack([r.step_rewards for r in prm.score(data["prompt"], data["steps"])])
    loglik = [
        np.stack(LogLikelihoodScorer(m, tok, task.step_separator)(data["prompt"], data["steps"]))
        for m in (policy, reference)
    ]
    np.testing.assert_allclose(got, 0.5 * (loglik[0] - loglik[1]), rtol=1e-4, atol=1e-6)
    metrics = step_metrics(prm.score, task.step_dataset(8, seed=14))
    assert set(metrics) >= {"step_auroc", "bug_auroc", "localisation", "outcome_auroc"}


def test_exact_solver_passes_the_sanity_checks(task):
    oracle = SolverOracle(task)
    ref = reference_metrics(oracle, task, task.solve(2000, seed=11))
    assert ref["bug_value_prob"] == pytest.approx(0.7, rel=1e-9)
    assert ref["right_value_prob"] == pytest.approx(0.95, rel=1e-9)
    assert ref["value_kl"] == pytest.approx(0.0, abs=1e-12) and ref["format_prob"] == pytest.approx(1.0, abs=1e-12)
    control = step_metrics(
        LogLikelihoodScorer(oracle, task.tokenizer(), task.step_separator), task.step_dataset(2000, 11)
    )
    assert control["bug_auroc"] == 0.0 and control["slip_auroc"] == 1.0  # log pi_ref prefers the bug value
    cands = sample_candidates(oracle, task, num_prompts=250, n=16, seed=12)
    assert cands.bug_error[cands.bug_cell].mean() == pytest.approx(0.7, abs=0.02)  # samples follow pi_ref
    assert np.array_equal(cands.ops[:16], np.repeat(cands.ops[:1], 16, axis=0))  # a prompt's candidates together
    base = best_of_n_baselines(cands, n=16)
    assert base["bon16_random"] == pytest.approx(task.solve(20_000, 13).label.mean(), abs=0.03)
    assert base["bon4_oracle"] < base["bon16_oracle"]


@pytest.mark.slow
def test_trained_reference_passes_the_sanity_checks(task, tmp_path):
    """ALGORITHMS.md 4(g): pi_ref(bug value) in [0.6, 0.8], within-bug-cell AUROC of log pi_ref <= 0.10, random 0.5."""
    start = time.perf_counter()
    path = train_reference(task, str(tmp_path / "ref"))
    trained_in = time.perf_counter() - start
    model, tokenizer = load_reference(path)
    ref = reference_metrics(model, task, task.solve(2000, seed=1000))
    assert 0.6 <= ref["bug_value_prob"] <= 0.8, ref
    assert ref["right_value_prob"] > 0.9 and ref["value_kl"] < 0.1 and ref["format_prob"] > 0.99, ref
    data = task.step_dataset(2000, seed=1000)
    control = step_metrics(LogLikelihoodScorer(model, tokenizer, task.step_separator), data)
    assert control["bug_auroc"] <= 0.10 and control["slip_auroc"] > 0.95, control
    rand = step_metrics(RandomScorer(seed=0), data)
    assert rand["step_auroc"] == pytest.approx(0.5, abs=0.05) and rand["bug_auroc"] == pytest.approx(0.5, abs=0.05)
    start = time.perf_counter()
    assert train_reference(task, path) == path and (tmp_path / "ref" / REFERENCE_MARKER).exists()
    assert time.perf_counter() - start < min(2.0, trained_in / 5)  # cached: nothing trained the second time
