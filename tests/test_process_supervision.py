"""Process supervision: TRL's stepwise format checked with named errors and read by the implicit PRM, and the
ProcessBench-style first-error evaluation against hand computations and a brute-force threshold search."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
from datasets import Dataset
from peft import LoraConfig

from tests.conftest import cpu_args
from trl_likelihood import ImplicitPRMConfig, ImplicitPRMTrainer, evaluate_metrics
from trl_likelihood.prm_evaluation import best_threshold, evaluate_prm, first_error_scores, predicted_first_error
from trl_likelihood.stepwise_data import validate_stepwise_dataset

STEPWISE = {
    "prompt": ["2+3*4 =", "7-2 ="],
    "completions": [["3*4 = 12", "2+12 = 14", "so 14"], ["7-2 = 4", "so 4"]],
    "labels": [[True, True, True], [False, False]],
}
LORA = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"completions": [["a"], []]}, r"column 'completions', row 1: expected a non-empty list of steps"),
        ({"completions": [["a", " "], ["b"]]}, r"column 'completions', row 0, step 1: expected a non-empty string"),
        ({"labels": [[True], [True]]}, r"column 'labels', row 0: expected one label per step \(3\)"),
        ({"labels": [[True, True, "yes"], [True, True]]}, r"column 'labels', row 0, step 2: expected a boolean"),
        ({"prompt": ["a", []]}, r"column 'prompt', row 1: expected text or a non-empty message list"),
    ],
)
def test_stepwise_rows_are_checked_with_the_place_named(change, message):
    rows = {**STEPWISE, **change}
    if "completions" in change and "labels" not in change:
        rows["labels"] = [[True] * len(steps) for steps in rows["completions"]]
    with pytest.raises(ValueError, match=message):
        validate_stepwise_dataset([dict(zip(rows, values)) for values in zip(*rows.values())], "eval_dataset")


def test_a_dataset_without_the_stepwise_columns_is_refused():
    with pytest.raises(ValueError, match=r"has columns \['prompt'\]; expected \['prompt', 'completions', 'labels'\]"):
        validate_stepwise_dataset(Dataset.from_dict({"prompt": ["a"]}))


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_implicit_prm_reads_stepwise_data_as_outcome_labels(tiny_model_dir, tmp_path, conversational):
    """One response per row, the steps joined by ``step_separator``; correct when every step is."""
    data = dict(STEPWISE)
    if conversational:
        data["prompt"] = [[{"role": "user", "content": p}] for p in data["prompt"]]
    args = ImplicitPRMConfig(str(tmp_path), stepwise=True, step_separator="\n", **cpu_args(max_steps=1))
    trainer = ImplicitPRMTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_dict(data), peft_config=LORA)
    assert trainer.train_dataset["prm_label"] == [1, 0]
    tokenizer = trainer.processing_class
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert "3*4 = 12\n2+12 = 14\nso 14" in text
    trainer.train()
    assert trainer.method_settings()["step_separator"] == "\n"


def test_completions_and_labels_without_a_reading_are_refused(tiny_model_dir, tmp_path):
    args = ImplicitPRMConfig(str(tmp_path), **cpu_args())
    with pytest.raises(ValueError, match=r"stepwise-supervision format .* Set `stepwise=True` \(steps\) or"):
        ImplicitPRMTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_dict(STEPWISE), peft_config=LORA)


# --- ProcessBench-style evaluation --------------------------------------------------------------------------------
SCORES = [[0.9, 0.2, 0.8], [0.7, 0.6], [0.9, 0.8, 0.1], [0.3, 0.9]]
LABELS = [[1, 0, 0], [1, 1], [1, 1, 1], [1, 0]]  # first errors: 1, none, none, 1


def test_first_error_scores_by_hand():
    # threshold 0.5: predicted first errors 1, none, 2, 0 -> erroneous: 1 of 2 found; correct: 1 of 2 kept
    scores = first_error_scores(SCORES, LABELS, threshold=0.5)
    assert predicted_first_error(SCORES[3], 0.5) == 0
    assert scores["error_accuracy"] == 0.5 and scores["correct_accuracy"] == 0.5 and scores["f1"] == 0.5
    assert scores["num_erroneous"] == 2 and scores["num_correct"] == 2
    # threshold 0.15: predicted none, none, 2, none -> erroneous 0 of 2: F1 0 however many correct are kept
    assert first_error_scores(SCORES, LABELS, threshold=0.15)["f1"] == 0.0


def test_a_judge_that_calls_everything_correct_scores_zero():
    assert first_error_scores(SCORES, LABELS, threshold=-math.inf)["f1"] == 0.0
    assert first_error_scores(SCORES, LABELS, threshold=math.inf)["f1"] == 0.0


def test_best_threshold_matches_a_brute_force_search():
    rng, checked = random.Random(0), 0
    for _ in range(30):
        n = rng.randint(1, 12)
        scores = [[round(rng.random(), 1) for _ in range(rng.randint(1, 5))] for _ in range(n)]
        labels = [[int(rng.random() < 0.8) for _ in s] for s in scores]
        values = sorted({v for s in scores for v in s})
        grid = [-math.inf, math.inf, *values, *(v + 0.05 for v in values)]
        f1s = [first_error_scores(scores, labels, t)["f1"] for t in grid]
        best = first_error_scores(scores, labels, best_threshold(scores, labels))["f1"]
        if not math.isnan(best):  # both kinds of response present
            checked += 1
            assert best == pytest.approx(max(f1s))
    assert checked >= 10


def test_processbench_module_uses_the_given_or_the_best_threshold():
    module = evaluate_metrics.load("processbench")
    given = module.compute(predictions=SCORES, references=LABELS, threshold=0.5)
    assert given["f1"] == 0.5 and given["threshold"] == 0.5
    best = module.compute(predictions=SCORES, references=LABELS)
    assert best["f1"] == pytest.approx(first_error_scores(SCORES, LABELS, best_threshold(SCORES, LABELS))["f1"])
    assert best["f1"] >= given["f1"]


class _LookupScorer:
    """A stand-in PRM whose step rewards are given per prompt: ``evaluate_prm`` needs only ``score``."""

    def __init__(self, rewards: dict[str, list[float]]) -> None:
        self.rewards = rewards

    def score(self, prompts, steps):
        return [SimpleNamespace(step_rewards=self.rewards[p]) for p in prompts]


def test_evaluate_prm_picks_the_threshold_on_the_dev_split():
    rows = lambda ids: Dataset.from_dict(  # noqa: E731
        {
            "prompt": [f"q{i}" for i in ids],
            "completions": [["s"] * len(SCORES[i]) for i in ids],
            "labels": [[bool(x) for x in LABELS[i]] for i in ids],
        }
    )
    scorer = _LookupScorer({f"q{i}": s for i, s in enumerate(SCORES)})
    dev, test = rows([0, 1, 2, 3]), rows([0, 1, 2, 3])
    result = evaluate_prm(scorer, test, dev_dataset=dev)
    assert result["threshold"] == best_threshold(SCORES, LABELS)
    assert result["f1"] == first_error_scores(SCORES, LABELS, result["threshold"])["f1"]
    flat = [s for row in SCORES for s in row]
    right = [bool(x) for row in LABELS for x in row]
    pairs = [(p, n) for p, lp in zip(flat, right) if lp for n, ln in zip(flat, right) if not ln]
    assert result["step_auroc"] == pytest.approx(sum((p > n) + 0.5 * (p == n) for p, n in pairs) / len(pairs))
    assert evaluate_prm(scorer, test, threshold=0.5)["f1"] == 0.5
    with pytest.raises(ValueError, match="pass `dev_dataset`, or a `threshold`"):
        evaluate_prm(scorer, test)


def test_an_implicit_prm_is_evaluated_on_stepwise_data(tiny_model_dir):
    """The scorer reads stepwise rows as they are; a PRM equal to its reference (every reward 0) is at chance."""
    from trl_likelihood import ImplicitPRM

    prm = ImplicitPRM(tiny_model_dir, reference=tiny_model_dir)
    data = Dataset.from_dict(STEPWISE)
    result = evaluate_prm(prm, data, dev_dataset=data)
    assert result["step_auroc"] == 0.5 and result["num_erroneous"] == 1 and result["num_correct"] == 1


def _write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_prm_command(tiny_model_dir, tmp_path, capsys):
    from trl_likelihood.entry import main

    rows = [dict(zip(STEPWISE, values)) for values in zip(*STEPWISE.values())] * 4
    data = _write_jsonl(tmp_path / "steps.jsonl", rows)
    out = tmp_path / "scores.json"
    argv = ["--model", tiny_model_dir, "--reference", tiny_model_dir, "--dataset_name", data]
    assert main(["evaluate-prm", *argv, "--dev_fraction", "0.5", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["step_auroc"] == 0.5 and result["num_erroneous"] + result["num_correct"] == 4

    rows[5] = {**rows[5], "labels": [True]}
    bad = _write_jsonl(tmp_path / "bad.jsonl", rows)
    argv = ["--model", tiny_model_dir, "--reference", tiny_model_dir, "--dataset_name", bad, "--threshold", "0"]
    assert main(["evaluate-prm", *argv]) == 2
    assert "column 'labels', row 5: expected one label per step (2)" in capsys.readouterr().err


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_the_commands_load_an_explicit_prm_as_a_stepwise_scorer(tiny_model_dir, tmp_path, capsys, peft):
    """``evaluate-prm`` and ``score`` take a trained explicit PRM (a token classifier) as they take an implicit one."""
    from trl_likelihood import StepwisePRM, StepwisePRMConfig, StepwisePRMTrainer
    from trl_likelihood.entry import main
    from trl_likelihood.prm_scorer import is_token_classifier, load_prm

    out = tmp_path / "explicit"
    trainer = StepwisePRMTrainer(
        tiny_model_dir,
        args=StepwisePRMConfig(str(tmp_path / "run"), **cpu_args(max_steps=1)),
        train_dataset=Dataset.from_dict(STEPWISE),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="TOKEN_CLS") if peft else None,
    )
    trainer.train()
    trainer.save_model(str(out))
    assert is_token_classifier(str(out)) and not is_token_classifier(tiny_model_dir)
    assert isinstance(load_prm(str(out)), StepwisePRM)
    rows = [dict(zip(STEPWISE, values)) for values in zip(*STEPWISE.values())] * 2
    data = _write_jsonl(tmp_path / "steps.jsonl", rows)
    capsys.readouterr()  # the training logs
    assert main(["evaluate-prm", "--model", str(out), "--dataset_name", data, "--threshold", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["num_erroneous"] == 2
