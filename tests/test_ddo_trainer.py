"""DDOTrainer: the identity at theta = theta_ref, self-play rounds, one model under LoRA, fakes, data and errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

import trl_likelihood.trainers.ddo as ddo_module
from tests.conftest import cpu_args
from tests.helpers import LORA, causal_lms, logged_steps
from tests.tiny import CORPUS
from trl_likelihood.generation import append_completions, sample_completions
from trl_likelihood.trainers import DDOConfig, DDOTrainer

METRICS = ("loss", "ddo/real_logratio", "ddo/fake_logratio", "ddo/real_acc", "ddo/fake_acc", "ddo/paired_acc")


_TRAIN_KEYS = ("max_steps", "learning_rate", "per_device_train_batch_size", "seed", "max_length")


def _args(tmp_path, name: str, **kw) -> DDOConfig:
    train = {k: kw.pop(k) for k in list(kw) if k in _TRAIN_KEYS}
    kw.setdefault("beta", 0.5)
    kw.setdefault("max_new_tokens", 12)
    return DDOConfig(f"{tmp_path}/{name}", **kw, **cpu_args(**train))


def _identity(alpha: float) -> float:
    return (1 + alpha) * math.log(2) / max(alpha, 1)


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full-copy"])
def test_ddo_rounds_reset_the_reference(tiny_model_dir, prompt_completion_dataset, tmp_path, peft):
    """Two rounds of two steps: the loss is the identity at steps 1 and 3, where policy == reference."""
    alpha = 2.0
    before = causal_lms()
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "rounds", alpha=alpha, num_rounds=2, max_steps=4, learning_rate=5e-2),
        train_dataset=prompt_completion_dataset,
        peft_config=LoraConfig(**LORA) if peft else None,
    )
    assert trainer.reference.kind == ("adapter" if peft else "model")
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    steps = logged_steps(trainer)
    assert [h["ddo/round"] for h in steps] == [1, 1, 2, 2]
    for i in (0, 2):  # first step of each round
        assert steps[i]["loss"] == pytest.approx(_identity(alpha), abs=1e-6)
        assert steps[i]["ddo/real_logratio"] == pytest.approx(0.0, abs=1e-5)
        assert steps[i]["ddo/fake_logratio"] == pytest.approx(0.0, abs=1e-5)
    assert abs(steps[1]["ddo/real_logratio"]) > 1e-3 and steps[1]["loss"] != pytest.approx(_identity(alpha), abs=1e-4)
    assert abs(steps[3]["ddo/real_logratio"]) > 1e-3
    for h in steps:
        assert all(math.isfinite(h[k]) for k in METRICS) and 0.0 <= h["ddo/sampling_time_share"] <= 1.0
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())  # PEFT: the base never moves, even across rounds
    assert any(not torch.equal(params[n], p) for n, p in trained.items())
    if peft:
        assert causal_lms() - before == {id(trainer.model.get_base_model())}  # one model in memory, across rounds
    else:
        ref = trainer.reference.ref_model
        assert ref is not trainer.model and not any(p.requires_grad for p in ref.parameters())


def test_ddo_full_finetune_with_explicit_frozen_reference(tiny_model_dir, prompt_completion_dataset, tmp_path):
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref_before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    trainer = DDOTrainer(
        model=tiny_model_dir,
        ref_model=ref,
        args=_args(tmp_path, "full", alpha=0.5, max_steps=3, learning_rate=1e-3),
        train_dataset=prompt_completion_dataset,
    )
    assert trainer.reference.kind == "model" and trainer.reference.ref_model is ref
    trainer.train()
    steps = logged_steps(trainer)
    assert steps[0]["loss"] == pytest.approx(_identity(0.5), abs=1e-6)  # (1 + 0.5) log 2, no division below 1
    assert abs(steps[-1]["ddo/real_logratio"]) > 1e-4
    assert all(torch.equal(p, ref_before[n]) for n, p in ref.named_parameters())  # one round: the reference is fixed


def test_ddo_conditional_fakes_continue_the_real_prompts(tiny_model_dir, prompt_completion_dataset, tmp_path):
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "cond"),
        train_dataset=prompt_completion_dataset,
        peft_config=LoraConfig(**LORA),
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    real = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    with torch.no_grad(), trainer._reference_model(trainer.model) as ref:
        fakes = trainer._fakes(ref, real, "train")
    batch = append_completions(real, fakes, trainer._pad)
    assert batch["input_ids"].size(0) == 8 and torch.equal(
        batch["labels"][:4, : real["labels"].size(1)], real["labels"]
    )
    for i, (prompt, completion) in enumerate(fakes):
        assert prompt == tok(prompt_completion_dataset[i]["prompt"])["input_ids"]  # the same prompt as the real row
        assert 1 <= len(completion) <= 12
        n = len(prompt) + len(completion)
        assert batch["input_ids"][4 + i, :n].tolist() == prompt + completion
        scored = batch["labels"][4 + i]
        assert (scored[: len(prompt)] == -100).all() and (scored[n:] == -100).all()  # only the completion is scored
        assert scored[len(prompt) : n].tolist() == completion and batch["attention_mask"][4 + i].sum() == n


def test_ddo_unconditional_text_samples_from_the_start_token_and_evaluates(tiny_model_dir, lm_dataset, tmp_path):
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "lm", max_steps=2, per_device_eval_batch_size=4),
        train_dataset=lm_dataset,
        eval_dataset=lm_dataset.select(range(8)),
        peft_config=LoraConfig(**LORA),
    )
    real = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    with torch.no_grad(), trainer._reference_model(trainer.model) as ref:
        fakes = trainer._fakes(ref, real, "train")
    assert [p for p, _ in fakes] == [[t] for t in real["input_ids"][:, 0].tolist()]  # everything after it is scored
    trainer.train()
    assert logged_steps(trainer)[0]["loss"] == pytest.approx(_identity(1.0), abs=1e-6)
    metrics = trainer.evaluate()
    assert all(math.isfinite(metrics[f"eval_{k}"]) for k in METRICS)
    assert metrics["eval_ddo/round"] == 1


def test_ddo_is_reproducible(tiny_model_dir, prompt_completion_dataset, tmp_path):
    losses = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = DDOTrainer(
            model=tiny_model_dir,
            args=_args(tmp_path, name, max_steps=3, seed=seed, learning_rate=5e-2),
            train_dataset=prompt_completion_dataset,
            peft_config=LoraConfig(**LORA),
        )
        trainer.train()
        losses.append([(h["loss"], h["ddo/fake_length"]) for h in logged_steps(trainer)])
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_ddo_round_pool_samples_each_row_once_per_round(
    tiny_model_dir, prompt_completion_dataset, tmp_path, monkeypatch
):
    sampled = []
    real_sample = ddo_module.sample_completions

    def counting(model, prompts, *args, **kwargs):
        sampled.append(len(prompts))
        return real_sample(model, prompts, *args, **kwargs)

    monkeypatch.setattr(ddo_module, "sample_completions", counting)
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "pool", fake_pool="round", max_steps=4),  # 8 rows, batch 4: two epochs in one round
        train_dataset=prompt_completion_dataset.select(range(8)),
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    assert sum(sampled) == 8 and len(trainer._pool) == 8


def test_ddo_dataset_without_usable_rows_fails_before_training(tiny_model_dir, tmp_path):
    long_prompt = " ".join(CORPUS[:20])
    data = Dataset.from_dict({"prompt": [long_prompt] * 4, "completion": [" the cat."] * 4})
    with pytest.raises(ValueError, match="no usable rows"):
        DDOTrainer(model=tiny_model_dir, args=_args(tmp_path, "empty", max_length=16), train_dataset=data)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"alpha": -1.0}, "`alpha` must be a number >= 0"),
        ({"beta": 0.0}, "`beta` must be a positive number"),
        ({"num_rounds": 0}, "`num_rounds` must be an integer >= 1"),
        ({"round_steps": 0}, "`round_steps` must be an integer >= 1"),
        ({"fake_pool": "epoch"}, r"`fake_pool` must be one of \('online', 'round'\)"),
        ({"packing": True}, "packing=False"),
        ({"top_p": 0.0}, "`top_p` must be a number in"),
        ({"temperature": -1.0}, "`temperature` must be a positive number"),
    ],
)
def test_ddo_config_rejects_bad_values(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        DDOConfig(str(tmp_path), use_cpu=True, bf16=False, **kw)


def test_ddo_card_states_rounds_alpha_beta_and_reference(tiny_model_dir, prompt_completion_dataset, tmp_path):
    from huggingface_hub import ModelCard

    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "card", alpha=2.0, beta=0.25, num_rounds=2, max_steps=2),
        train_dataset=prompt_completion_dataset,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(f"{tmp_path}/card/README.md")
    assert card.data.library_name == "peft" and "ddo" in card.data.tags
    assert "alpha = 2.0" in card.text and "beta = 0.25" in card.text
    assert "2 of 2 self-play round(s)" in card.text and "the base model of this adapter" in card.text
    assert "end of the previous round" in card.text and "2503.01103" in card.text
    assert str(tmp_path) not in card.content


def test_ddo_cli_entry(tiny_model_dir, tmp_path):
    from trl_likelihood import cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in CORPUS[:8]))
    out = tmp_path / "cli"
    argv = ["ddo", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(data), "--output_dir", str(out)]
    argv += ["--max_steps", "1", "--per_device_train_batch_size", "2", "--use_cpu", "--bf16", "false"]
    argv += ["--report_to", "none", "--max_new_tokens", "4", "--alpha", "0.5", "--use_peft", "--lora_r", "2"]
    assert cli.main(argv) == 0
    assert "alpha = 0.5" in (out / "README.md").read_text()


def test_ddo_conversational_fakes_answer_the_user_turn(tiny_model_dir, conversational_dataset, tmp_path):
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "conv", assistant_only_loss=True, max_steps=1),
        train_dataset=conversational_dataset,
        peft_config=LoraConfig(**LORA),
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    real = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(3)]))
    with torch.no_grad(), trainer._reference_model(trainer.model) as ref:
        fakes = trainer._fakes(ref, real, "train")
    for i, (prompt, _) in enumerate(fakes):
        user = conversational_dataset[i]["messages"][:1]
        assert prompt == tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
    trainer.train()
    assert logged_steps(trainer)[0]["loss"] == pytest.approx(_identity(1.0), abs=1e-6)


def test_ddo_qlora_rounds_keep_the_4bit_base(lm_dataset, tmp_path):
    """The 4-bit base is never merged into: rounds swap adapter snapshots. Width 64, because bitsandbytes' CPU
    inference kernel (used while sampling, in eval mode) needs output dims divisible by 32."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from tests.tiny import build_tiny_model

    path = build_tiny_model(str(tmp_path / "wide"), hidden_size=64)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float32)
    trainer = DDOTrainer(
        model=model,
        args=_args(tmp_path, "qlora", num_rounds=2, max_steps=4, learning_rate=5e-2),
        train_dataset=lm_dataset,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    steps = logged_steps(trainer)
    assert steps[2]["ddo/round"] == 2 and steps[2]["ddo/real_logratio"] == pytest.approx(0.0, abs=1e-5)
    assert abs(steps[1]["ddo/real_logratio"]) > 1e-3
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules())


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full-copy"])
def test_ddo_resume_mid_round_two_matches_an_uninterrupted_run(
    tiny_model_dir, prompt_completion_dataset, tmp_path, peft
):
    def run(resume: str | None = None) -> DDOTrainer:
        args = _args(tmp_path, "resume", num_rounds=2, max_steps=4, learning_rate=5e-2)
        args.save_strategy, args.save_steps = "steps", 3  # checkpoint-3: inside round 2, whose reference is step 2
        trainer = DDOTrainer(
            model=tiny_model_dir,
            args=args,
            train_dataset=prompt_completion_dataset,
            peft_config=LoraConfig(**LORA) if peft else None,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run()
    assert os.path.isfile(tmp_path / "resume" / "checkpoint-3" / "ddo_round.pt")
    resumed = run(str(tmp_path / "resume" / "checkpoint-3"))
    last, again = logged_steps(full)[-1], logged_steps(resumed)[-1]
    assert again["step"] == 4 and again["ddo/round"] == 2
    assert again["loss"] == pytest.approx(last["loss"], rel=1e-5)
    assert again["ddo/real_logratio"] == pytest.approx(last["ddo/real_logratio"], rel=1e-4, abs=1e-6)
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)


def test_ddo_copied_reference_samples_its_own_weights(tiny_model_dir, prompt_completion_dataset, tmp_path):
    """A deepcopy of the fused-head policy would sample with the policy's weights; the reference must not."""
    trainer = DDOTrainer(model=tiny_model_dir, args=_args(tmp_path, "copy"), train_dataset=prompt_completion_dataset)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.mul_(0.5)  # the policy moves away from its initial weights
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    kw = dict(max_new_tokens=8, eos_token_id=None, pad_token_id=trainer._pad, seed=3)
    with trainer._reference_model(trainer.model) as ref:
        ours = sample_completions(ref, [[0]] * 4, **kw).input_ids
    assert torch.equal(ours, sample_completions(fresh, [[0]] * 4, **kw).input_ids)
    assert not torch.equal(ours, sample_completions(trainer.model, [[0]] * 4, **kw).input_ids)


@pytest.mark.parametrize(("num_rounds", "round_steps", "runs"), [(5, None, 3), (3, 2, 2), (3, None, 3)])
def test_rounds_that_do_not_fit_the_steps_are_named(
    tiny_model_dir, prompt_completion_dataset, tmp_path, caplog, num_rounds, round_steps, runs
):
    """3 steps hold at most 3 rounds (of one step each), and 2 rounds of 2 steps: later rounds would never start."""
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "fit", num_rounds=num_rounds, round_steps=round_steps, max_steps=3),
        train_dataset=prompt_completion_dataset,
        peft_config=LoraConfig(**LORA),
    )
    with caplog.at_level("WARNING"):
        trainer.train()
    messages = [r.getMessage() for r in caplog.records if "`num_rounds`" in r.getMessage()]
    if runs == num_rounds:
        assert messages == []
    else:
        assert len(messages) == 1 and f"`num_rounds`={num_rounds} but 3 training steps" in messages[0]
        assert f"run only {runs} round(s)" in messages[0]
    assert trainer._round + 1 == runs
