"""MixCETrainer end to end: the SFT identity, parameters move, metrics finite, PEFT/QLoRA, data formats, eval."""

from __future__ import annotations

import math
import os

import pytest
import torch
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from tests.conftest import cpu_args
from trl_likelihood import MixCEConfig, MixCETrainer


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _trainable_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


SHAPES = {  # data shape -> (dataset fixture, SFT settings that shape it)
    "text": ("lm_dataset", {}),
    "prompt-completion": ("prompt_completion_dataset", {}),
    "assistant-only": ("conversational_dataset", {"assistant_only_loss": True}),
    "packing": ("conversational_dataset", {"packing": True, "max_length": 32}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_mixce_trainer_eta_one_is_sft(tiny_model_dir, tmp_path, request, shape):
    """At eta = 1 MixCE is SFT on every data shape SFT takes: the same losses and the same weights."""
    fixture, settings = SHAPES[shape]
    dataset = request.getfixturevalue(fixture)
    common = cpu_args(gradient_accumulation_steps=2, per_device_train_batch_size=2, **settings)
    sft = SFTTrainer(model=tiny_model_dir, args=SFTConfig(f"{tmp_path}/sft", **common), train_dataset=dataset)
    mix = MixCETrainer(
        model=tiny_model_dir, args=MixCEConfig(f"{tmp_path}/mix", eta=1.0, **common), train_dataset=dataset
    )
    if shape in ("prompt-completion", "assistant-only"):  # only the response tokens are targets
        batch = mix.data_collator([mix.train_dataset[i] for i in range(2)])
        assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    assert mix.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
    sft.train()
    mix.train()
    assert _losses(mix) == pytest.approx(_losses(sft), rel=1e-6)
    assert all(math.isfinite(h["mixce/forward_nll"]) for h in mix.state.log_history if "loss" in h)
    for (name, p_sft), p_mix in zip(sft.model.named_parameters(), mix.model.parameters()):
        torch.testing.assert_close(p_mix, p_sft, rtol=1e-5, atol=1e-7, msg=name)


def test_mixce_trainer_trains_and_logs(tiny_model_dir, lm_dataset, tmp_path):
    args = MixCEConfig(f"{tmp_path}/mix", eta=0.3, **cpu_args())
    trainer = MixCETrainer(model=tiny_model_dir, args=args, train_dataset=lm_dataset)
    before = _trainable_snapshot(trainer.model)
    trainer.train()
    assert all(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 3
    for h in steps:
        for key in ("loss", "mixce/forward_nll", "entropy", "mean_token_accuracy", "grad_norm"):
            assert math.isfinite(h[key]), key
        # with eta < 1 the MixCE loss is strictly below the NLL: weights eta + (1 - eta) q are < 1
        assert h["loss"] < h["mixce/forward_nll"]


def test_mixce_differs_from_sft(tiny_model_dir, lm_dataset, tmp_path):
    common = cpu_args(max_steps=2)
    sft = SFTTrainer(model=tiny_model_dir, args=SFTConfig(f"{tmp_path}/sft", **common), train_dataset=lm_dataset)
    mix = MixCETrainer(
        model=tiny_model_dir, args=MixCEConfig(f"{tmp_path}/mix", eta=0.0, **common), train_dataset=lm_dataset
    )
    sft.train()
    mix.train()
    w_sft = sft.model.model.layers[0].self_attn.q_proj.weight
    w_mix = mix.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(w_sft, w_mix)


def test_mixce_gradient_accumulation_matches_one_big_batch(tiny_model_dir, lm_dataset, tmp_path):
    """Normalisation by the global token count: 2 micro-batches of 4 == one batch of 8, for eta < 1."""
    # SGD: Adam's update divides by sqrt(v) and turns float noise on near-zero gradients into O(lr) differences
    opt = dict(max_steps=2, learning_rate=0.5, optim="sgd")
    big = cpu_args(per_device_train_batch_size=8, **opt)
    small = cpu_args(per_device_train_batch_size=4, gradient_accumulation_steps=2, **opt)
    runs = []
    for name, kw in (("big", big), ("accum", small)):
        trainer = MixCETrainer(
            model=tiny_model_dir, args=MixCEConfig(f"{tmp_path}/{name}", eta=0.3, **kw), train_dataset=lm_dataset
        )
        trainer.train()
        runs.append(trainer)
    assert _losses(runs[0]) == pytest.approx(_losses(runs[1]), rel=1e-5)
    for p_big, p_acc in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(p_acc, p_big, rtol=1e-5, atol=1e-6)


def test_mixce_lora_keeps_base_frozen_and_saves_an_adapter(tiny_model_dir, lm_dataset, tmp_path):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = MixCEConfig(f"{tmp_path}/lora", eta=0.5, **cpu_args(learning_rate=5e-2))
    trainer = MixCETrainer(model=tiny_model_dir, args=args, train_dataset=lm_dataset, peft_config=peft_config)
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    lora_before = _trainable_snapshot(trainer.model)
    assert lora_before and all("lora_" in n for n in lora_before)
    trainer.train()
    for n, p in trainer.model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), f"base weight {n} moved"
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)
    trainer.save_model()
    files = set(os.listdir(args.output_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert "model.safetensors" not in files


def test_mixce_qlora_4bit_trains(tiny_model_dir, lm_dataset, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, dtype=torch.float32)
    assert getattr(model, "is_loaded_in_4bit", False)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = MixCEConfig(f"{tmp_path}/qlora", eta=0.5, **cpu_args(max_steps=2, learning_rate=5e-2))
    trainer = MixCETrainer(model=model, args=args, train_dataset=lm_dataset, peft_config=peft_config)
    lora_before = _trainable_snapshot(trainer.model)
    trainer.train()
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules())


def test_mixce_eval_reports_plain_nll_and_perplexity(tiny_model_dir, lm_dataset, tmp_path):
    for eta in (1.0, 0.2):
        args = MixCEConfig(f"{tmp_path}/eval{eta}", eta=eta, per_device_eval_batch_size=5, **cpu_args())
        trainer = MixCETrainer(model=tiny_model_dir, args=args, train_dataset=lm_dataset, eval_dataset=lm_dataset)
        metrics = trainer.evaluate()
        nll = metrics["eval_mixce/forward_nll"]
        assert metrics["eval_mixce/perplexity"] == pytest.approx(math.exp(nll), rel=1e-9)
        if eta == 1.0:
            plain_nll = nll
        else:  # same untrained model: the plain NLL does not depend on eta, the MixCE loss does
            assert nll == pytest.approx(plain_nll, rel=1e-6)
            assert metrics["eval_loss"] < nll
    # exact corpus NLL over uneven batches (5, 5, 5, 5, 4), computed here by hand with the model
    model = trainer.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in trainer.eval_dataset:
            ids = torch.tensor([row["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            total -= logp.gather(-1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    assert nll == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("eta", [-0.01, 1.01, "half"])
def test_mixce_config_rejects_bad_eta(eta, tmp_path):
    with pytest.raises(ValueError, match="`eta` must be a number in \\[0, 1\\]"):
        MixCEConfig(str(tmp_path), eta=eta, use_cpu=True, bf16=False)
