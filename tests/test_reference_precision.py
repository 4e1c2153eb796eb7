"""The reference runs in the policy's precision: with ``bf16=True`` (fp32 weights, accelerate's autocast) the log-ratio
at theta = theta_ref is exactly 0 for every reference source, so the implicit PRM's first loss is log 2 and DDO's first
logged log-ratios are 0.

Before the fix only the prepared policy ran under autocast and every reference in fp32: step 1 logged a PRM accuracy
of 0.75 and a DDO paired accuracy of 1.0 with the policy equal to the reference, a bias that grows with the length.
"""

from __future__ import annotations

import math

import pytest
from peft import LoraConfig

from tests.conftest import cpu_args
from tests.reliability import prm_rows, prompt_completion_rows
from trl_likelihood import DDOConfig, DDOTrainer, ImplicitPRMConfig, ImplicitPRMTrainer

LORA = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
SOURCES = {  # reference source -> (trainer kwargs, config fields)
    "adapter": ({"peft_config": LORA}, {}),
    "frozen-copy": ({}, {}),
    "ref_model": ({"ref_model": "MODEL"}, {}),
    "precomputed-adapter": ({"peft_config": LORA}, {"precompute_ref_log_probs": True}),
    "precomputed-copy": ({}, {"precompute_ref_log_probs": True}),
}


def _bf16(**overrides) -> dict:
    # learning_rate 0: the policy stays the reference at every step, so every logged step checks the identity
    return cpu_args(bf16=True, max_steps=2, per_device_train_batch_size=4, learning_rate=0.0, **overrides)


def _kwargs(source: str, model_dir: str) -> tuple[dict, dict]:
    kwargs, fields = SOURCES[source]
    return {k: (model_dir if v == "MODEL" else v) for k, v in kwargs.items()}, fields


@pytest.mark.parametrize("source", list(SOURCES))
def test_implicit_prm_bf16_identity_for_every_reference(tiny_model_dir, tmp_path, source):
    kwargs, fields = _kwargs(source, tiny_model_dir)
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=ImplicitPRMConfig(str(tmp_path), beta=0.5, **fields, **_bf16()),
        train_dataset=prm_rows(),
        **kwargs,
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["loss"] == pytest.approx(math.log(2), abs=1e-6), h
        assert h["prm/reward_correct"] == 0.0 and h["prm/reward_incorrect"] == 0.0, h


@pytest.mark.parametrize("source", ["adapter", "frozen-copy", "ref_model"])
def test_ddo_bf16_identity_for_every_reference(tiny_model_dir, tmp_path, source):
    kwargs, fields = _kwargs(source, tiny_model_dir)
    trainer = DDOTrainer(
        model=tiny_model_dir,
        args=DDOConfig(str(tmp_path), beta=0.5, max_new_tokens=12, **fields, **_bf16()),
        train_dataset=prompt_completion_rows(),
        **kwargs,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["loss"] == pytest.approx(2 * math.log(2), abs=1e-6), h
        assert h["ddo/real_logratio"] == 0.0 and h["ddo/fake_logratio"] == 0.0, h
        assert h["ddo/paired_acc"] == 0.0, h  # equal log-ratios: no pair is ranked
