"""StepwisePRMTrainer and StepwisePRM: label positions counted by hand, logits at init equal to a plain forward, the
base frozen under LoRA, named data errors, a saved model that scores what it was trained on, and the scorer interface
it shares with ImplicitPRM."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from tests.conftest import cpu_args
from tests.test_cards import run_quick_start
from trl_likelihood import ImplicitPRM, StepScores, StepwisePRM, StepwisePRMConfig, StepwisePRMTrainer, cli, load_prm
from trl_likelihood.losses import stepwise_prm_loss
from trl_likelihood.metrics import binary_auroc
from trl_likelihood.prm_scorer import sigmoid

# Words of the tiny tokenizer's corpus; every row has a correct and an incorrect step, so every batch has both.
ROWS = [
    ("the cat runs", ["over the dog.", "a red model", "writes new words."], [True, False, True]),
    ("a model learns", ["text from data", "and the dog runs fast."], [False, True]),
    ("the policy", ["samples tokens.", "the reward is small", "blue", "green answer."], [True, True, False, True]),
    ("question", ["the step", "answer over the cat."], [True, False]),
]
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _data(n: int = 8, conversational: bool = False) -> Dataset:
    rows = [ROWS[i % len(ROWS)] for i in range(n)]
    prompts = [[{"role": "user", "content": p}] if conversational else p for p, _, _ in rows]
    return Dataset.from_dict(
        {"prompt": prompts, "completions": [c for _, c, _ in rows], "labels": [lab for _, _, lab in rows]}
    )


def _args(tmp_path, name: str = "run", **kw) -> StepwisePRMConfig:
    train = {k: kw.pop(k) for k in list(kw) if k in cpu_args()}
    return StepwisePRMConfig(f"{tmp_path}/{name}", **kw, **cpu_args(**train))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _classifier(path: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # the head `score` is new: seeded, so two builds are the same model
    return AutoModelForTokenClassification.from_pretrained(path, num_labels=2)


def _by_hand(tokenizer, prompt, steps: list[str], separator: str = "\n") -> tuple[list[int], list[int]]:
    """Input ids and step-end indices counted from the tokenizer: prompt (a chat one rendered by the template), then
    each step's tokens with the separator's appended."""
    if isinstance(prompt, str):
        assert tokenizer.bos_token_id is None  # the tiny tokenizer has no BOS, so none is prepended
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    else:
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<|im_start|>assistant\n")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = []
    for step in steps:
        ids = ids + tokenizer(step, add_special_tokens=False)["input_ids"] + tokenizer(separator)["input_ids"]
        ends.append(len(ids) - 1)
    return ids, ends


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "chat"])
def test_labels_sit_exactly_at_the_step_ends(tiny_model_dir, tokenizer, tmp_path, conversational):
    data = _data(4, conversational)
    trainer = StepwisePRMTrainer(tiny_model_dir, args=_args(tmp_path, max_length=None), train_dataset=data)
    for i in range(4):
        ids, ends = _by_hand(tokenizer, data[i]["prompt"], data[i]["completions"])
        row = trainer.train_dataset[i]
        assert row["input_ids"] == ids
        expected = [-100] * len(ids)
        for end, label in zip(ends, data[i]["labels"]):
            expected[end] = int(label)
        assert row["labels"] == expected
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith(
        "over the dog.\na red model\nwrites new words.\n"
    )
    again = StepwisePRMTrainer(
        tiny_model_dir, args=_args(tmp_path, max_length=None), train_dataset=trainer.train_dataset
    )
    assert again.train_dataset.to_list() == trainer.train_dataset.to_list()  # token rows are taken as they are


def test_truncation_and_last_step_only(tiny_model_dir, tokenizer, tmp_path):
    ids, ends = _by_hand(tokenizer, ROWS[0][0], ROWS[0][1])
    prompt_len = len(tokenizer(ROWS[0][0])["input_ids"])
    # max_length ends inside step 2: only step 1 keeps its label; row 3's prompt alone fills it, so it is dropped
    data = Dataset.from_dict(
        {"prompt": [ROWS[0][0], "the " * 30], "completions": [ROWS[0][1]] * 2, "labels": [ROWS[0][2]] * 2}
    )
    trainer = StepwisePRMTrainer(
        tiny_model_dir, args=_args(tmp_path, max_length=ends[1], max_prompt_length=None), train_dataset=data
    )
    assert len(trainer.train_dataset) == 1 and trainer.dropped_rows["train_dataset"] == 1
    row = trainer.train_dataset[0]
    assert row["input_ids"] == ids[: ends[1]] and [i for i, x in enumerate(row["labels"]) if x != -100] == [ends[0]]
    last = StepwisePRMTrainer(
        tiny_model_dir,
        args=_args(tmp_path, train_on_last_step_only=True, max_prompt_length=2),
        train_dataset=data.select([0]),
    )
    row = last.train_dataset[0]  # the prompt keeps its last 2 tokens; only the last step is labelled
    assert row["input_ids"] == ids[prompt_len - 2 :]
    assert [(i, x) for i, x in enumerate(row["labels"]) if x != -100] == [(ends[-1] - prompt_len + 2, 1)]


def test_stepwise_prm_loss_is_cross_entropy_at_the_labels():
    logits = torch.randn(2, 5, 2)
    labels = torch.tensor([[-100, 1, -100, 0, -100], [0, -100, -100, -100, 1]])
    expected = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(stepwise_prm_loss(logits, labels), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(stepwise_prm_loss(logits, labels, num_labelled=8), expected / 2, rtol=1e-6, atol=0)


def test_logits_at_init_are_a_plain_forward_at_the_step_ends(tiny_model_dir, tokenizer, tmp_path):
    model = _classifier(tiny_model_dir)
    plain = copy.deepcopy(model).eval()
    data = _data(3)
    trainer = StepwisePRMTrainer(model, args=_args(tmp_path), train_dataset=data, processing_class=tokenizer)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(3)]))
    assert batch["input_ids"].shape[1] > min(len(r) for r in trainer.train_dataset[:3]["input_ids"])  # padded
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    recorded = trainer._window("eval").rows[-1]  # (log-odds, label) per step, padded rows labelled -1
    recorded = recorded[recorded[:, 1] >= 0]
    logodds, labels, picked = [], [], []
    for i in range(3):
        ids, ends = _by_hand(tokenizer, data[i]["prompt"], data[i]["completions"])
        with torch.no_grad():
            logits = plain(input_ids=torch.tensor([ids])).logits[0, ends]  # (steps, 2), unpadded
        logodds.append(logits[:, 1] - logits[:, 0])
        labels += [int(x) for x in data[i]["labels"]]
        picked.append(logits)
    torch.testing.assert_close(recorded[:, 0], torch.cat(logodds), rtol=1e-5, atol=1e-5)
    assert recorded[:, 1].tolist() == labels
    expected = F.cross_entropy(torch.cat(picked), torch.tensor(labels))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_training_moves_weights_and_logs_finite_step_metrics(tiny_model_dir, tmp_path):
    trainer = StepwisePRMTrainer(
        tiny_model_dir,
        args=_args(tmp_path, eval_strategy="steps", eval_steps=3),
        train_dataset=_data(8),
        eval_dataset=_data(4),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 3
    for h in steps:
        for key in ("loss", "prm/step_accuracy", "prm/step_auroc"):
            assert math.isfinite(h[key]), key
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert evals and all(math.isfinite(evals[-1][k]) for k in ("eval_prm/step_accuracy", "eval_prm/step_auroc"))


def test_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path):
    """Rows hold 2 to 4 labelled steps, so per-micro-batch means would weight steps unevenly; SGD shows it."""
    runs = []
    for name, batch, accumulation in (("big", 4, 1), ("acc", 2, 2)):
        args = _args(
            tmp_path,
            name,
            optim="sgd",
            learning_rate=0.5,
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
        )
        trainer = StepwisePRMTrainer(_classifier(tiny_model_dir), args=args, train_dataset=_data(4))
        trainer.train()
        runs.append(trainer)
    for (n, p), (_, q) in zip(runs[0].model.named_parameters(), runs[1].model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h][0] for t in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_resume_goes_on_as_an_uninterrupted_run(tiny_model_dir, tmp_path, peft):
    """Checkpoint at step 2 of 4, resumed in a fresh trainer: the same logged steps and the same final weights."""
    runs = []
    for name in ("whole", "resumed"):
        args = _args(tmp_path, "run", max_steps=4, save_strategy="steps", save_steps=2, learning_rate=5e-2)
        trainer = StepwisePRMTrainer(
            tiny_model_dir, args=args, train_dataset=_data(16), peft_config=LoraConfig(**LORA) if peft else None
        )
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2") if name == "resumed" else None)
        runs.append(trainer)
    keys = ("step", "loss", "prm/step_accuracy", "prm/step_auroc")
    logged = [[{k: h[k] for k in keys} for h in t.state.log_history if "loss" in h and h["step"] > 2] for t in runs]
    assert len(logged[0]) == len(logged[1]) == 2
    for whole, resumed in zip(*logged):
        assert resumed == pytest.approx(whole, rel=1e-6), whole["step"]
    for (n, p), (_, q) in zip(runs[0].model.named_parameters(), runs[1].model.named_parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-7, msg=n)


@pytest.mark.parametrize("task_type", [None, "TOKEN_CLS", "CAUSAL_LM"])
def test_lora_freezes_the_base_and_trains_adapter_and_head(tiny_model_dir, tmp_path, task_type):
    trainer = StepwisePRMTrainer(
        tiny_model_dir,
        args=_args(tmp_path, learning_rate=5e-2),
        train_dataset=_data(8),
        peft_config=LoraConfig(**LORA, task_type=task_type),
    )
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("score.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for n in before:
        if n not in trainable:
            assert torch.equal(after[n], before[n]), f"frozen weight {n} moved"
    assert not torch.equal(
        after[next(n for n in trainable if "lora_B" in n)], before[next(n for n in trainable if "lora_B" in n)]
    )
    assert all(not torch.equal(after[n], before[n]) for n in trainable if "modules_to_save" in n)


def test_qlora_from_model_init_kwargs_trains_adapter_and_head_on_a_4bit_base(tmp_path):
    """QLoRA as the CLI's --load_in_4bit sets it up: the quantization config in ``model_init_kwargs``. Width 64:
    bitsandbytes' CPU kernels want output dims divisible by 32."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from tests.tiny import build_tiny_model

    path = build_tiny_model(str(tmp_path / "wide"), hidden_size=64)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    args = _args(tmp_path, max_steps=2, learning_rate=5e-2, model_init_kwargs={"quantization_config": quant})
    trainer = StepwisePRMTrainer(path, args=args, train_dataset=_data(8), peft_config=LoraConfig(**LORA))
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2 and all(math.isfinite(h["loss"]) for h in steps)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n or "modules_to_save" in n for n in moved)
    assert any("score.modules_to_save" in n for n in moved)


def test_peft_task_type_other_than_token_cls_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="task_type` must be 'TOKEN_CLS'"):
        StepwisePRMTrainer(
            tiny_model_dir,
            args=_args(tmp_path),
            train_dataset=_data(),
            peft_config=LoraConfig(**LORA, task_type="SEQ_CLS"),
        )


@pytest.mark.parametrize(
    ("column", "row", "value", "message"),
    [
        (
            "labels",
            2,
            [1, 1, 2, 1],
            r"train_dataset: column 'labels', row 2, step 2: expected a boolean or 0/1, got 2",
        ),
        ("completions", 1, ["ok", ""], r"train_dataset: column 'completions', row 1, step 1: expected a non-empty"),
        ("labels", 3, [1], r"train_dataset: column 'labels', row 3: expected one label per step \(2\)"),
    ],
)
def test_bad_stepwise_data_is_refused_before_training(tiny_model_dir, tmp_path, column, row, value, message):
    rows = [{**r, "labels": [int(x) for x in r["labels"]]} for r in _data(4).to_list()]  # ints: Arrow keeps a 2
    rows[row][column] = value
    with pytest.raises(ValueError, match=message):
        StepwisePRMTrainer(tiny_model_dir, args=_args(tmp_path), train_dataset=Dataset.from_list(rows))


def test_streamed_data_trains_and_names_a_bad_row_when_read(tiny_model_dir, tmp_path):
    """A stream cannot be checked whole before training: each row is checked as it is tokenised."""
    trainer = StepwisePRMTrainer(
        tiny_model_dir, args=_args(tmp_path, max_steps=2), train_dataset=_data(8).to_iterable_dataset()
    )
    trainer.train()
    assert trainer.state.global_step == 2
    rows = [{**r, "labels": [int(x) for x in r["labels"]]} for r in _data(8).to_list()]
    rows[5]["labels"][0] = 3
    stream = Dataset.from_list(rows).to_iterable_dataset()
    bad = StepwisePRMTrainer(tiny_model_dir, args=_args(tmp_path, "bad", max_steps=2), train_dataset=stream)
    with pytest.raises(ValueError, match=r"train_dataset: column 'labels', row 5, step 0: expected a boolean or 0/1"):
        bad.train()


def test_config_defaults_and_checks(tmp_path):
    args = StepwisePRMConfig(str(tmp_path), use_cpu=True)
    assert (args.step_separator, args.logging_steps, args.learning_rate, args.bf16) == ("\n", 10, 1e-5, True)
    assert StepwisePRMConfig(str(tmp_path), use_cpu=True, fp16=False, bf16=False).bf16 is False
    with pytest.raises(ValueError, match="`max_length` must be an integer >= 1"):
        StepwisePRMConfig(str(tmp_path), use_cpu=True, max_length=0)


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_saved_model_reloads_and_scores_the_trained_positions(tiny_model_dir, tokenizer, tmp_path, peft):
    out = tmp_path / "saved"
    trainer = StepwisePRMTrainer(
        tiny_model_dir,
        args=_args(tmp_path, step_separator=" ;", max_steps=2, learning_rate=5e-2),
        train_dataset=_data(8),
        peft_config=LoraConfig(**LORA) if peft else None,
    )
    trainer.train()
    trainer.save_model(str(out))
    assert json.load(open(out / "method_settings.json"))["step_separator"] == " ;"
    card = open(out / "README.md").read()
    assert "stepwise-prm" in card and "process reward model" in card and '| `step_separator` | `" ;"` |' in card
    assert ("adapter_config.json" in os.listdir(out)) == peft
    meta = ModelCard.load(out / "README.md").data
    assert meta.pipeline_tag == "token-classification" and meta.library_name == ("peft" if peft else "transformers")
    quick = run_quick_start(ModelCard.load(out / "README.md"), repo_id=Path(trainer.args.output_dir).name, folder=out)
    assert len(quick["result"].step_rewards) == 3 and quick["best"] in (0, 1)  # the card's snippet runs as written
    prm = StepwisePRM.from_pretrained(str(out))
    assert isinstance(load_prm(str(out)), StepwisePRM)  # told apart from an implicit PRM by its saved config
    assert prm.step_separator == " ;"  # read back from method_settings.json
    prompt, steps = ROWS[2][0], ROWS[2][1]
    result = prm.score(prompt, steps)
    assert isinstance(result, StepScores) and len(result.step_rewards) == len(steps)
    ids, ends = _by_hand(tokenizer, prompt, steps, " ;")
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([ids])).logits[0, ends].float()
    torch.testing.assert_close(
        torch.tensor(result.step_rewards, dtype=torch.float64),
        (logits[:, 1] - logits[:, 0]).double(),
        rtol=1e-5,
        atol=1e-5,
    )
    assert result.score == min(result.step_rewards)
    assert sum(result.num_tokens) == len(ids) - len(tokenizer(prompt)["input_ids"])  # every step token, once
    assert max(abs(r) for r in result.step_rewards) > 1e-3  # training moved the head off a constant


def test_saved_files_hold_no_token_and_the_card_no_local_path(tiny_model_dir, tmp_path):
    """``training_args.bin`` pickles the arguments next to every save: its public copy blanks the Hub token and the
    token in ``model_init_kwargs``; the card names the base by its folder's name only."""
    token = "hf_" + "S" * 34
    args = _args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1, hub_token=token)
    args.model_init_kwargs = {"token": token}
    trainer = StepwisePRMTrainer(tiny_model_dir, args=args, train_dataset=_data(8), peft_config=LoraConfig(**LORA))
    trainer.train()
    trainer.save_model()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.parent.name == "checkpoint-1" for p in files)
    for path in files:
        assert token.encode() not in path.read_bytes(), path
    published = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert published.hub_token is None and published.model_init_kwargs == {"token": None}
    card = (tmp_path / "run" / "README.md").read_text()
    assert str(tmp_path) not in card and os.path.dirname(tiny_model_dir) not in card
    assert f"`{os.path.basename(tiny_model_dir)}`" in card  # the base, by its folder's name


def _rank_and_vote(scorer, prompt, candidates, answers):
    """What a user runs with either scorer, unchanged: Best-of-N and a weighted vote, checked against score()."""
    scores = [s.score for s in scorer.score(prompt, candidates)]
    best, got = scorer.best_of_n(prompt, candidates)
    assert got == pytest.approx(scores) and best == max(range(len(scores)), key=scores.__getitem__)
    winner, weights = scorer.weighted_majority_vote(prompt, candidates, answers)
    expected = {}
    for answer, score in zip(answers, scores):
        expected[answer] = expected.get(answer, 0.0) + sigmoid(score)
    assert weights == pytest.approx(expected) and winner == max(expected, key=expected.get)
    return best, winner


def test_implicit_and_explicit_scorers_are_used_the_same_way(tiny_model_dir, tokenizer):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        torch.manual_seed(1)
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = _classifier(tiny_model_dir, seed=3)
    implicit = load_prm(tiny_model_dir, reference=reference, beta=0.5)  # a causal LM: the implicit scorer
    assert isinstance(implicit, ImplicitPRM)
    scorers = [implicit, StepwisePRM(model, tokenizer)]
    candidates = [ROWS[0][1], ROWS[1][1], ROWS[2][1]]
    for scorer in scorers:
        _rank_and_vote(scorer, "the cat runs", candidates, ["14", "12", "14"])
        for aggregate in ("min", "sum", "last", "min_q"):
            result = scorer.score("the cat runs", candidates[0], aggregate=aggregate)
            assert len(result.step_rewards) == len(result.q_values) == len(result.num_tokens) == 3
            assert result.q_values == pytest.approx(torch.tensor(result.step_rewards).cumsum(0).tolist())
    with pytest.raises(ValueError, match="num_labels"):
        StepwisePRM(AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=3), tokenizer)


def _cli_config(tmp_path, tiny_model_dir, rows: list[dict]) -> str:
    """A user's YAML: the tiny model, a stepwise jsonl, fast CPU training, a custom separator."""
    data = tmp_path / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model_name_or_path": tiny_model_dir,
        "dataset_name": str(data),
        "output_dir": str(tmp_path / "out"),
        **cpu_args(max_steps=2),
        "step_separator": " ;",
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_cli_trains_an_adapter_that_scores(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = _cli_config(tmp_path, tiny_model_dir, _data(8).to_list())
    assert cli.main(["stepwise-prm", "--config", config, "--use_peft", "--lora_r", "4"]) == 0
    assert f"Model saved to {out}" in capsys.readouterr().out
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "method_settings.json"} <= files
    adapter = json.load(open(out / "adapter_config.json"))
    assert adapter["task_type"] == "TOKEN_CLS" and adapter["r"] == 4 and "score" in adapter["modules_to_save"]
    state = json.load(open(out / "trainer_state.json"))
    steps = [h for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 2 and all(math.isfinite(h["prm/step_accuracy"]) for h in steps)
    assert '| `step_separator` | `" ;"` |' in open(out / "README.md").read()
    result = StepwisePRM.from_pretrained(str(out)).score(ROWS[0][0], ROWS[0][1])
    assert len(result.step_rewards) == 3 and all(math.isfinite(r) for r in result.step_rewards)


def test_cli_bad_step_label_exits_2_before_training(tiny_model_dir, tmp_path, capsys):
    rows = _data(4).to_list()
    rows[3]["labels"] = [True, None]
    assert cli.main(["stepwise-prm", "--config", _cli_config(tmp_path, tiny_model_dir, rows)]) == 2
    err = capsys.readouterr().err
    assert "stepwise-prm: error: train_dataset: column 'labels', row 3, step 1: expected a boolean or 0/1" in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_two_cpu_processes_equal_one_with_twice_the_batch(tiny_model_dir, tmp_path):
    """Two gloo ranks (batch 2 each, the launch script) against one process (batch 4), read in order: rows hold 2 to 4
    steps, so only a loss divided by both ranks' steps, with DDP's average undone, saves the same weights. The
    5-row evaluation splits unevenly over the ranks: its step metrics equal the saved model's, scored alone."""
    from safetensors.torch import load_file

    from tests.test_distributed import _env, _launch_two

    (tmp_path / "data").mkdir()
    for split, rows in (("train", _data(8)), ("test", _data(5))):
        (tmp_path / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows.to_list()))
    settings = {
        "model_name_or_path": tiny_model_dir,
        "dataset_name": str(tmp_path / "data"),
        **cpu_args(max_steps=2, per_device_train_batch_size=2, learning_rate=0.5),
        "optim": "sgd",
        "train_sampling_strategy": "sequential",
        "eval_strategy": "steps",
        "eval_steps": 2,
        "per_device_eval_batch_size": 2,
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(settings))
    script, config = os.path.join(os.path.dirname(cli.__file__), "..", "trainers", "stepwise_prm.py"), "cfg.yaml"
    runs = {
        "one": [sys.executable, script, "--config", config, "--per_device_train_batch_size", "4"],
        "two": _launch_two(script, config),
    }
    for name, command in runs.items():
        command = [*command, "--output_dir", name]
        proc = subprocess.run(command, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    logs = {n: json.load(open(tmp_path / n / "trainer_state.json"))["log_history"] for n in runs}
    losses = {n: [h["loss"] for h in log if "loss" in h] for n, log in logs.items()}
    assert len(losses["one"]) == 2 and losses["two"] == pytest.approx(losses["one"], rel=1e-5)
    one, two = (load_file(str(tmp_path / n / "model.safetensors")) for n in runs)
    for n, p in one.items():
        torch.testing.assert_close(two[n], p, rtol=1e-5, atol=1e-6, msg=n)
    evaluation = next(h for h in logs["two"] if "eval_prm/step_accuracy" in h)
    prm, test = load_prm(str(tmp_path / "two")), _data(5).to_dict()
    scored = prm.score(test["prompt"], test["completions"])
    logodds = torch.tensor([r for s in scored for r in s.step_rewards])
    labels = torch.tensor([bool(x) for row in test["labels"] for x in row])
    assert len(labels) == 14  # 3 + 2 + 4 + 2 + 3 steps, each once
    assert evaluation["eval_prm/step_accuracy"] == pytest.approx(((logodds > 0) == labels).float().mean().item())
    assert evaluation["eval_prm/step_auroc"] == pytest.approx(binary_auroc(logodds, labels))


def test_all_linear_lora_leaves_the_head_to_full_training(tiny_model_dir, tmp_path):
    """PEFT's "all-linear" counts the classifier head among its targets and then failed with "modules_to_save
    cannot be applied to modules of type Linear" (found by the engine matrix); the head is left out of it."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    trainer = StepwisePRMTrainer(tiny_model_dir, args=_args(tmp_path), train_dataset=_data(8), peft_config=config)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("mlp" in n and "lora_" in n for n in trainable)  # every linear layer of the body is adapted
    assert any("score.modules_to_save" in n for n in trainable) and not any("score.lora" in n for n in trainable)
    assert config.exclude_modules is None  # the user's config is not changed
    trainer.train()


def test_a_lora_target_naming_the_head_is_refused(tiny_model_dir, tmp_path):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "score"])
    with pytest.raises(ValueError, match="names the classifier head 'score'"):
        StepwisePRMTrainer(tiny_model_dir, args=_args(tmp_path), train_dataset=_data(8), peft_config=config)
