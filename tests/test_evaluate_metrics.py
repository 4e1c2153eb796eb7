"""The shipped ``evaluate`` modules: they load offline from their path, give hand-computed values, and agree with the
lab's own metrics (``prefix_metrics``, ``bigram_metrics``, ``step_metrics``), which compute through them."""

from __future__ import annotations

import math
import subprocess
import sys
import zipfile
from pathlib import Path

import evaluate
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_likelihood import evaluate_metrics
from trl_likelihood import metrics as tm
from trl_likelihood.lab import PAD_ID, BigramTask, bigram_metrics, prefix_metrics, sample_model, tiny_causal_lm

REPO = Path(__file__).resolve().parent.parent
INF = float("inf")


@pytest.mark.parametrize("name", evaluate_metrics.METRICS)
def test_every_module_loads_offline_from_its_path(name):
    path = evaluate_metrics.module_path(name)
    assert Path(path).is_file() and Path(path).is_relative_to(REPO / "trl_likelihood")
    module = evaluate.load(path)  # HF_HUB_OFFLINE=1 (conftest): a Hub lookup would fail
    assert isinstance(module, evaluate.Metric) and module.name == name
    assert type(evaluate_metrics.load(name)) is type(module)
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate_metrics.module_path("accuracy")


def test_distribution_metrics_by_hand():
    model = [[0.5, 0.5, 0.0], [0.1, 0.7, 0.2]]
    true = [[1.0, 0.0, 0.0], [0.1, 0.7, 0.2]]  # the second context is learned exactly: JS 0
    # JS([1, 0], [.5, .5]): m = [.75, .25]; 0.5 * log(1/.75) + 0.5 * (0.5 log(.5/.75) + 0.5 log(.5/.25))
    js_first = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    js = evaluate_metrics.load("per_context_js").compute(predictions=model, references=true)
    assert js == {"js": pytest.approx(js_first / 2, rel=1e-12)}
    assert tm.per_context_js(model, true) == js["js"]
    mass = evaluate_metrics.load("impossible_mass").compute(predictions=model, references=true)
    assert mass == {"zero_mass": pytest.approx(0.25, rel=1e-12)}  # 0.5 on the first context's impossible token, 0
    assert tm.impossible_mass(model, true) == mass["zero_mass"]
    with pytest.raises(ValueError, match="probability distribution"):
        tm.per_context_js([[2.0, 1.0]], [[0.5, 0.5]])  # logits passed by mistake


def test_sample_metrics_by_hand():
    log_p, num_tokens = [-3.0, -INF, -1.0, -INF], [2, 5, 2, 1]
    rate = evaluate_metrics.load("invalid_sample_rate").compute(log_probs=log_p)
    assert rate == {"invalid_rate": 0.5} and tm.invalid_rate(log_p) == 0.5
    reverse = evaluate_metrics.load("reverse_cross_entropy").compute(log_probs=log_p, num_tokens=num_tokens)
    assert reverse == {"reverse_nll": 1.0}  # (3 + 1) / (2 + 2): impossible samples left out
    assert tm.reverse_cross_entropy(log_p, num_tokens) == 1.0
    assert math.isnan(tm.reverse_cross_entropy([-INF], [3]))


def test_step_metrics_by_hand():
    scores = [[0.9, 0.1], [0.2, 0.2, 0.6], [0.1, 0.3, 0.2], [0.3, 0.4]]
    correct = [[1, 0], [1, 0, 1], [1, 0, 0], [1, 1]]
    # correct steps 0.9, 0.2, 0.6, 0.1, 0.3, 0.4 vs wrong 0.1, 0.2, 0.3, 0.2: wins count 1, ties 1/2
    wins = {0.9: 4, 0.2: 1 + 0.5 * 2, 0.6: 4, 0.1: 0.5, 0.3: 3 + 0.5, 0.4: 4}
    expected = sum(wins.values()) / (6 * 4)
    auroc = evaluate_metrics.load("step_auroc").compute(predictions=scores, references=correct)
    assert auroc == {"step_auroc": pytest.approx(expected, rel=1e-12)}
    as_bools = [[bool(c) for c in row] for row in correct]
    assert evaluate_metrics.load("step_auroc").compute(predictions=scores, references=as_bools) == auroc
    assert tm.step_auroc(scores, correct) == auroc["step_auroc"]
    # single-error responses: the first (argmin is the error: 1) and the second (tie of the error with a correct
    # step: 1/2); the third has two errors and the fourth none, so both are skipped
    loc = evaluate_metrics.load("first_error_localisation").compute(predictions=scores, references=correct)
    assert loc == {"localisation": 0.75} and tm.first_error_localisation(scores, correct) == 0.75


def test_generation_quality_by_hand():
    texts = ["a b a b a b", "c d", "e"]
    out = evaluate_metrics.load("generation_quality").compute(predictions=texts)
    # 9 tokens, 5 distinct; bigrams ab ba ab ba ab cd: 3 distinct of 6; 4-grams only in the first text:
    # abab baba abab, 2 distinct of 3, so seq-rep-4 = 1/3 (the short texts are skipped); lengths 6, 2, 1
    assert out == pytest.approx(
        {"distinct_1": 5 / 9, "distinct_2": 3 / 6, "repetition_rate": 1 / 3, "mean_length": 3.0}, rel=1e-12
    )
    assert out == tm.generation_quality(texts)
    two = evaluate_metrics.load("generation_quality").compute(predictions=texts, ns=(3,), repetition_n=2)
    # trigrams aba bab aba bab: 2 distinct of 4; seq-rep-2 of the first two texts: 1 - 2/5 and 1 - 1/1
    assert two == pytest.approx({"distinct_3": 2 / 4, "repetition_rate": 0.3, "mean_length": 3.0}, rel=1e-12)
    chars = tm.generation_quality(["aab"], tokenizer=list)  # a callable tokenizer: characters
    assert chars["distinct_1"] == 2 / 3 and chars["mean_length"] == 3


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits 0 everywhere: p = 1/V for every token
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = ["the cat runs fast.", "a model learns text from data and writes new words."]
    vocab = model.config.vocab_size
    by_path = evaluate_metrics.load("perplexity").compute(predictions=texts, model=str(tmp_path))
    assert by_path["perplexities"] == pytest.approx([vocab, vocab], rel=1e-5)
    assert by_path["mean_perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert by_path["perplexity"] == pytest.approx(vocab, rel=1e-5)


def test_perplexity_matches_a_naive_forward(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["the cat runs fast.", "a model learns text from data and writes new words."]
    nll, counts = [], []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        logq = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        nll.append(-logq.gather(-1, ids[0, 1:, None]).sum().item())
        counts.append(ids.shape[1] - 1)
    out = evaluate_metrics.load("perplexity").compute(predictions=texts, model=model, tokenizer=tokenizer)
    assert out["perplexities"] == pytest.approx([math.exp(n / c) for n, c in zip(nll, counts)], rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(sum(nll) / sum(counts)), rel=1e-5)
    assert out == tm.perplexity(model, tokenizer, texts)


def test_modules_agree_with_the_lab_metrics():
    task = BigramTask(vocab_size=12, max_len=8, seed=0)
    model = tiny_causal_lm(task.tokenizer(), hidden_size=16, seed=0).eval()
    ids = task.sample(40, seed=7)
    lab = prefix_metrics(model, ids, task)
    with torch.no_grad():
        q = torch.softmax(model(input_ids=ids, attention_mask=(ids != PAD_ID).long()).logits[:, :-1].double(), -1)
    gold = torch.nn.functional.pad(task.next_token_probs(ids[:, :-1]), (0, q.shape[-1] - task.num_ids))
    valid = ids[:, 1:] != PAD_ID  # one row per visited prefix, as prefix_metrics weighs them
    rows = {"predictions": q[valid].tolist(), "references": gold[valid].tolist()}
    assert evaluate_metrics.load("per_context_js").compute(**rows)["js"] == pytest.approx(lab["js"], rel=1e-9)
    assert evaluate_metrics.load("impossible_mass").compute(**rows)["zero_mass"] == pytest.approx(
        lab["zero_mass"], rel=1e-9
    )
    full = bigram_metrics(model, task, num_sequences=40, num_samples=100, seed=7)
    log_p, num_tokens = task.log_prob(sample_model(model, task, 100, seed=8, batch_size=1000))  # bigram_metrics' draw
    assert 0 < full["invalid_rate"] < 1  # an untrained model: both valid and invalid samples
    inputs = {"log_probs": log_p.tolist(), "num_tokens": num_tokens.tolist()}
    rate = evaluate_metrics.load("invalid_sample_rate").compute(log_probs=inputs["log_probs"])
    assert rate["invalid_rate"] == pytest.approx(full["invalid_rate"], rel=1e-12)
    reverse = evaluate_metrics.load("reverse_cross_entropy").compute(**inputs)
    assert reverse["reverse_nll"] == pytest.approx(full["reverse_nll"], rel=1e-9)


def test_the_lab_step_metrics_equal_the_shipped_modules():
    """``step_metrics`` (implicit PRM report) computes with the library functions the modules wrap: same numbers."""
    from trl_likelihood.lab import modarith, prm_metrics

    data = modarith.ModArithTask().step_dataset(200, seed=1)
    metrics = prm_metrics.step_metrics(prm_metrics.RandomScorer(seed=0), data)
    rewards = prm_metrics.RandomScorer(seed=0)(data["prompt"], data["steps"])
    inputs = {
        "predictions": [list(r) for r in rewards],
        "references": [[int(c) for c in s] for s in data["step_correct"]],
    }
    assert evaluate_metrics.load("step_auroc").compute(**inputs)["step_auroc"] == metrics["step_auroc"]
    located = evaluate_metrics.load("first_error_localisation").compute(**inputs)["localisation"]
    assert located == metrics["localisation"]


@pytest.mark.slow
def test_wheel_ships_the_metric_modules(tmp_path):
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(REPO)]
    result = subprocess.run([*cmd, "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = tmp_path.glob("trl_likelihood-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in evaluate_metrics.METRICS:
        assert f"trl_likelihood/evaluate_metrics/{name}/{name}.py" in names
    assert "trl_likelihood/evaluate_metrics/__init__.py" in names and "trl_likelihood/metrics.py" in names


@pytest.mark.parametrize(
    ("name", "expected"), [("step_auroc", {"step_auroc": 1.0}), ("reverse_cross_entropy", {"reverse_nll": 23 / 30})]
)
def test_readme_examples_run_as_written(name, expected):
    """The README's examples with literal inputs are the inputs' real shapes (a flat list once was not)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ln.startswith(f'evaluate_metrics.load("{name}").compute('))
    assert eval(line, {"evaluate_metrics": evaluate_metrics}) == pytest.approx(expected)
