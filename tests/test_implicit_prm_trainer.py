"""ImplicitPRMTrainer: identities at initialisation, which tokens are scored, reference sources, data, errors."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import cpu_args
from tests.helpers import LORA, causal_lms, logged_steps
from tests.tiny import CORPUS
from trl_likelihood import ImplicitPRMConfig, ImplicitPRMTrainer
from trl_likelihood.prm_data import to_pairs


@pytest.fixture
def unpaired() -> Dataset:
    """12 prompts with 2 responses each, one correct and one incorrect: usable by ce and dpo."""
    rows = []
    for i in range(12):
        prompt = CORPUS[i][:12]
        rows.append({"prompt": prompt, "completion": CORPUS[i][12:], "label": True})
        rows.append({"prompt": prompt, "completion": CORPUS[i + 50][12:], "label": False})
    return Dataset.from_list(rows)


def _args(tmp_path, name: str, **kw) -> ImplicitPRMConfig:
    train = {k: kw.pop(k) for k in list(kw) if k in ("max_steps", "learning_rate", "per_device_train_batch_size")}
    return ImplicitPRMConfig(f"{tmp_path}/{name}", beta=kw.pop("beta", 0.5), **kw, **cpu_args(**train))


@pytest.mark.parametrize("loss_type", ["ce", "dpo"])
def test_prm_lora_starts_at_log2_trains_adapter_only_with_one_model(tiny_model_dir, unpaired, tmp_path, loss_type):
    before = causal_lms()
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, loss_type, loss_type=loss_type, learning_rate=5e-2),
        train_dataset=unpaired,
        peft_config=LoraConfig(**LORA),
    )
    assert trainer.reference.kind == "adapter" and trainer.reference.ref_model is None
    assert causal_lms() - before == {id(trainer.model.get_base_model())}  # one model in memory, no copy
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    steps = logged_steps(trainer)
    # LoRA's B starts at zero: policy == reference, reward 0, loss log 2 whatever the labels
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the reward moved off zero
    for h in steps:
        for key in ("loss", "prm/accuracy", "prm/reward_correct", "prm/reward_incorrect"):
            assert math.isfinite(h[key]), key
    for n, p in trainer.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"base weight {n} moved"
    assert any(not torch.equal(p, lora[n]) for n, p in trainer.model.named_parameters() if n in lora)


def test_prm_disables_dropout_like_dpo(tiny_model_dir, unpaired, tmp_path):
    lora = LoraConfig(**{**LORA, "lora_dropout": 0.1})
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir, args=_args(tmp_path, "drop"), train_dataset=unpaired, peft_config=lora
    )
    dropouts = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0 for m in dropouts)
    kept = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "keep", disable_dropout=False),
        train_dataset=unpaired,
        peft_config=lora,
    )
    assert any(m.p == 0.1 for m in kept.model.modules() if isinstance(m, torch.nn.Dropout))


def test_prm_scores_only_completion_tokens_and_eos(tiny_model_dir, unpaired, tmp_path):
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "tokens", loss_type="ce"),
        train_dataset=unpaired,
        peft_config=LoraConfig(**LORA),
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row in range(2):
        ex = unpaired[row]
        prompt_ids = tok(ex["prompt"])["input_ids"]
        full = tok(ex["prompt"] + ex["completion"])["input_ids"] + [tok.eos_token_id]
        scored = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert scored == full[len(prompt_ids) :]  # completion tokens then EOS, no prompt token
        assert batch["prm_label"][row].item() == int(ex["label"])


def test_prm_reward_is_beta_times_completion_logratio(tiny_model_dir, unpaired, tmp_path):
    """The trainer's reward against a naive full-logits computation, with a perturbed adapter."""
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "naive", loss_type="ce", beta=0.3),
        train_dataset=unpaired,
        peft_config=LoraConfig(**LORA),
    )
    torch.manual_seed(0)
    for n, p in trainer.model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(3)]))
    trainer.model.eval()
    trainer.compute_loss(trainer.model, dict(batch))
    got = trainer._window("eval").rows[-1][:, 0]  # (reward, label) per response

    def naive(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)
        target = batch["labels"][:, 1:]
        mask = target != -100
        return (logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * mask).sum(-1)

    with torch.no_grad():
        policy = naive(trainer.model)
        with trainer.model.disable_adapter():
            ref = naive(trainer.model)
    torch.testing.assert_close(got, 0.3 * (policy - ref), rtol=1e-4, atol=1e-5)
    assert got.abs().max() > 1e-3  # the perturbation made the ratio non-zero


def test_prm_pair_batch_layout_and_dpo_loss_by_hand(tiny_model_dir, tmp_path):
    """A batch of pairs is side-major: the chosen responses, then the rejected ones in the same order, with labels and
    stored reference log-probs alike; the loss is the pair loss by hand on those rows and the logged rewards keep a
    pair's two rows together, chosen first."""
    words = [(CORPUS[i].split(), CORPUS[i + 50].split()) for i in range(3)]  # cut at spaces: prompts tokenise alike
    pairs = Dataset.from_dict(
        {
            "prompt": [" ".join(w[:2]) for w, _ in words],
            "chosen": [" " + " ".join(w[2:7]) for w, _ in words],
            "rejected": [" " + " ".join(v[2:5]) for _, v in words],
        }
    )
    args = _args(tmp_path, "pairs", loss_type="dpo", beta=0.3, precompute_ref_log_probs=True)
    trainer = ImplicitPRMTrainer(model=tiny_model_dir, args=args, train_dataset=pairs, peft_config=LoraConfig(**LORA))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(3)]))
    for row, (side, ex) in enumerate((side, ex) for side in ("chosen", "rejected") for ex in pairs):
        prompt_ids = tok(ex["prompt"])["input_ids"]
        full = tok(ex["prompt"] + ex[side])["input_ids"] + [tok.eos_token_id]
        assert batch["labels"][row][batch["labels"][row] != -100].tolist() == full[len(prompt_ids) :], (side, ex)
    assert batch["prm_label"].tolist() == [1, 1, 1, 0, 0, 0]
    torch.manual_seed(0)
    for n, p in trainer.model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch))

    def naive(model):  # (6,) log-prob sums of the scored tokens, from full logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        target = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        return (logp * (target != -100)).sum(-1)

    with torch.no_grad():
        policy = naive(trainer.model)
        with trainer.model.disable_adapter():
            ref = naive(trainer.model)
    torch.testing.assert_close(batch["ref_logps"], ref, rtol=1e-4, atol=1e-5)  # stored in the same layout
    reward = 0.3 * (policy - ref)
    expected = -torch.nn.functional.logsigmoid(reward[:3] - reward[3:]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert (reward[:3] - reward[3:]).abs().max() > 1e-2  # the perturbation made the pairs differ
    logged = trainer._window("eval").rows[-1]  # one pair after another: chosen, rejected
    assert logged[:, 1].tolist() == [1, 0, 1, 0, 1, 0]
    torch.testing.assert_close(logged[:, 0], torch.stack([reward[:3], reward[3:]], 1).flatten(), rtol=1e-4, atol=1e-5)


def test_prm_precomputed_reference_trains_exactly_like_on_the_fly(tiny_model_dir, unpaired, tmp_path):
    runs = []
    for pre in (False, True):
        trainer = ImplicitPRMTrainer(
            model=tiny_model_dir,
            args=_args(tmp_path, f"pre{pre}", loss_type="dpo", precompute_ref_log_probs=pre, learning_rate=5e-2),
            train_dataset=unpaired,
            peft_config=LoraConfig(**LORA),
        )
        trainer.train()
        runs.append(trainer)
    assert runs[1].reference.kind == "precomputed" and "ref_logps" in runs[1].train_dataset.column_names
    assert [h["loss"] for h in logged_steps(runs[1])] == pytest.approx(
        [h["loss"] for h in logged_steps(runs[0])], rel=1e-5
    )


def test_prm_full_finetune_with_explicit_reference_and_eval_auroc(tiny_model_dir, unpaired, tmp_path):
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref_before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        ref_model=ref,
        args=_args(tmp_path, "full", loss_type="ce", learning_rate=1e-3),
        train_dataset=unpaired,
        eval_dataset=unpaired,
    )
    assert trainer.reference.kind == "model"
    trainer.train()
    assert logged_steps(trainer)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(torch.equal(p, ref_before[n]) for n, p in ref.named_parameters())  # the reference stays frozen
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_prm/auroc"] <= 1.0 and math.isfinite(metrics["eval_loss"])


def test_prm_without_reference_copies_the_initial_policy(tiny_model_dir, unpaired, tmp_path):
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir, args=_args(tmp_path, "copy", max_steps=2, learning_rate=1e-3), train_dataset=unpaired
    )
    assert trainer.reference.kind == "model" and trainer.reference.ref_model is not trainer.model
    trainer.train()
    assert logged_steps(trainer)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_prm_gradient_accumulation_matches_one_big_batch(tiny_model_dir, unpaired, tmp_path):
    runs = []
    opt = dict(max_steps=2, learning_rate=0.5, optim="sgd")
    for name, kw in (
        ("big", dict(per_device_train_batch_size=8)),
        ("acc", dict(per_device_train_batch_size=4, gradient_accumulation_steps=2)),
    ):
        args = ImplicitPRMConfig(f"{tmp_path}/{name}", beta=0.5, **cpu_args(**opt, **kw))
        trainer = ImplicitPRMTrainer(
            model=tiny_model_dir, args=args, train_dataset=unpaired, peft_config=LoraConfig(**LORA)
        )
        trainer.train()
        runs.append(trainer)
    for p_big, p_acc in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(p_acc, p_big, rtol=1e-5, atol=1e-6)


def test_dpo_pairs_every_correct_with_every_incorrect():
    ds = Dataset.from_dict(
        {"prompt": ["p"] * 5 + ["q", "q"], "completion": list("abcde") + ["x", "y"], "label": [1, 1, 0, 0, 0, 1, 1]}
    )
    pairs = to_pairs(ds)
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == sorted(
        (c, r) for c in "ab" for r in "cde"
    )  # prompt q has only correct responses: dropped


def test_given_pairs_are_validated_as_the_pairs_returned():
    pairs = {"prompt": ["p", "q"], "chosen": [" a", " b"], "rejected": [" c", ""]}
    with pytest.raises(ValueError, match="column 'rejected', row 1: the prompt has no completion"):
        to_pairs(Dataset.from_dict(pairs))
    # with unpaired columns too, the pairs are what dpo trains on, so they are what is checked
    with pytest.raises(ValueError, match="column 'rejected', row 1"):
        to_pairs(Dataset.from_dict({**pairs, "completion": [" a", " b"], "label": [1, 0]}))
    assert to_pairs(Dataset.from_dict(pairs).select([0])) == [{"prompt": "p", "chosen": " a", "rejected": " c"}]


def test_prm_grouped_format_is_expanded(tiny_model_dir, tmp_path):
    ds = Dataset.from_dict(
        {"prompt": ["a cat", "a dog"], "completions": [[" runs", " sat"], [" red"]], "labels": [[True, False], [True]]}
    )
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "grouped", stepwise=False),
        train_dataset=ds,
        peft_config=LoraConfig(**LORA),
    )
    assert len(trainer.train_dataset) == 3 and sorted(trainer.train_dataset["prm_label"]) == [0, 1, 1]


@pytest.mark.parametrize(
    ("columns", "loss_type", "message"),
    [
        (
            {"prompt": ["a", "b"], "completion": [" x", " y"], "label": [1, 2]},
            "ce",
            "column 'label', row 1: expected a boolean or 0/1",
        ),
        ({"prompt": ["a", "b"], "completion": [" x", " y"], "label": ["yes", "no"]}, "ce", "column 'label', row 0"),
        (
            {"prompt": ["a", "b"], "completion": [" x", ""], "label": [1, 0]},
            "ce",
            "column 'completion', row 1: the prompt has no completion",
        ),
        (
            {"prompt": ["a", "b"], "completion": [" x", " y"], "label": [1, 0]},
            "dpo",
            "needs at least one prompt with both",
        ),
        ({"prompt": ["a"], "chosen": [" x"]}, "ce", "expected 'prompt' with 'completion' and 'label'"),
        (
            {"prompt": ["a"], "completions": [[" x", " y"]], "labels": [[1]]},
            "ce",
            "column 'labels', row 0: expected a list as long",
        ),
    ],
)
def test_prm_bad_data_fails_before_training(tiny_model_dir, tmp_path, columns, loss_type, message):
    with pytest.raises(ValueError, match=message):
        ImplicitPRMTrainer(
            model=tiny_model_dir,
            args=_args(tmp_path, "bad", loss_type=loss_type, stepwise=False),
            train_dataset=Dataset.from_dict(columns),
        )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"beta": 0.0}, "`beta` must be a positive"),
        ({"loss_type": "kto"}, "`loss_type` must be 'ce' or 'dpo'"),
        ({"packing": True}, "packing"),
    ],
)
def test_prm_config_rejects_bad_values(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        ImplicitPRMConfig(str(tmp_path), use_cpu=True, bf16=False, **kw)


def test_prm_card_names_reference_and_beta(tiny_model_dir, unpaired, tmp_path):
    from huggingface_hub import ModelCard

    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=_args(tmp_path, "card", loss_type="ce", beta=0.25, max_steps=1),
        train_dataset=unpaired,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(f"{tmp_path}/card/README.md")
    assert card.data.library_name == "peft" and "implicit-prm" in card.data.tags
    assert "process reward model" in card.text and "beta = 0.25" in card.text
    assert "the base model of this adapter" in card.text and 'reference="base"' in card.text
    assert "2412.01981" in card.text and str(tmp_path) not in card.content
