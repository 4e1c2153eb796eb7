"""Numerical safety, every trainer: extreme log-ratios, rows with nothing to score, one-token completions, rows far
longer than ``max_length``: a finite loss and finite gradients, or a clear error before training. And a non-finite
loss stops the run before its optimizer step, naming the step: no NaN weight, no checkpoint written after it.

The loss functions' own extreme-value tests are in test_losses / test_prm_losses / test_ddo_loss; here the whole
trainer runs (fused log-probs, masks, reference, metrics, optimizer).
"""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from tests.reliability import CASES, weights
from tests.tiny import CORPUS
from trl_likelihood.trainers.guards import FiniteLossGuard

ONE_STEP = dict(max_steps=1, per_device_train_batch_size=4, learning_rate=1e-2)


def _assert_finite_step(trainer) -> None:
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(math.isfinite(v) for h in logged for v in h.values() if isinstance(v, float)), logged
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def _scored(trainer) -> list[int]:
    """Scored tokens per row of the first batch, after the shift (the first token is never a target)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    return (batch["labels"][:, 1:] != -100).sum(1).tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_extreme_logratios_give_finite_loss_and_gradients(name, tiny_model_dir, tmp_path):
    """The policy's head scaled by 2000 after the reference was copied: log-probs of -1e3 and log-ratios of 1e4."""
    case = CASES[name]
    trainer = case.trainer(tiny_model_dir, case.args(tmp_path, **ONE_STEP))
    with torch.no_grad():
        trainer.model.lm_head.weight.mul_(2000.0)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        logps = torch.log_softmax(trainer.model(input_ids=batch["input_ids"]).logits.float(), -1)
    assert logps.min() < -1e3  # the regime the test is about: some targets have q ~ exp(-1000)
    trainer.train()
    _assert_finite_step(trainer)
    assert math.isfinite(trainer.state.log_history[0]["grad_norm"])


@pytest.mark.parametrize("name", list(CASES))
def test_single_token_completion(name, tiny_model_dir, tmp_path):
    """An empty completion is its EOS alone: it trains (one scored token a row), or is refused naming the row."""
    case = CASES[name]
    data = case.dataset().map(lambda ex: {"completion": ""})
    try:
        trainer = case.trainer(tiny_model_dir, case.args(tmp_path, **ONE_STEP), data)
    except ValueError as err:  # the implicit PRM: an empty response cannot carry an outcome label
        assert re.search(r"column 'completion', row 0\b", str(err)), err
        return
    assert _scored(trainer) == [1, 1, 1, 1]
    trainer.train()
    _assert_finite_step(trainer)


@pytest.mark.parametrize("name", list(CASES))
def test_long_rows_are_truncated_to_max_length(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    huge = " ".join(CORPUS) * 3  # ~20k tokens
    data = case.dataset().map(lambda ex, i: {"completion": huge} if i % 2 else {}, with_indices=True)
    trainer = case.trainer(tiny_model_dir, case.args(tmp_path, max_length=32, **ONE_STEP), data)
    lengths = [len(r["input_ids"]) for r in trainer.train_dataset]
    assert max(lengths) == 32
    trainer.train()
    _assert_finite_step(trainer)


@pytest.mark.parametrize("name", list(CASES))
def test_prompt_filling_max_length_everywhere_fails_before_training(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    data = case.dataset().map(lambda ex: {"prompt": " ".join(CORPUS[:20])})
    with pytest.raises(ValueError, match=r"train_dataset has no usable rows.*`max_length`=16"):
        case.trainer(tiny_model_dir, case.args(tmp_path, max_length=16, **ONE_STEP), data)


def _pretokenized_with_masked_rows() -> Dataset:
    """Rows 0, 1 and 3 have nothing to score (``max_length=None``: SFT keeps them), row 2 three tokens."""
    ids = [5, 9, 14, 3, 7, 8]
    masks = [[0] * 6, [0] * 6, [0, 0, 0, 1, 1, 1], [0] * 6]
    return Dataset.from_dict({"input_ids": [ids] * 4, "completion_mask": masks})


@pytest.mark.parametrize("name", list(CASES))
def test_rows_without_a_scored_token(name, tiny_model_dir, tmp_path):
    """Rows with no target token count zero in every mean. The implicit PRM refuses pre-tokenized rows (naming the
    columns it needs) and never sees such rows: every response keeps at least its EOS, or SFT drops it."""
    case = CASES[name]
    args = case.args(tmp_path, max_length=None, completion_only_loss=True, **ONE_STEP)
    try:
        trainer = case.trainer(tiny_model_dir, args, _pretokenized_with_masked_rows())
    except ValueError as err:
        assert re.search(r"column|columns", str(err)), err
        return
    assert _scored(trainer) == [0, 0, 3, 0]
    trainer.train()
    _assert_finite_step(trainer)


def _poison(trainer, at_step: int) -> None:
    """Make the loss NaN (and so its gradient) from optimizer step ``at_step`` on."""
    compute_loss = trainer.compute_loss

    def poisoned(model, inputs, *args, **kwargs):
        out = compute_loss(model, inputs, *args, **kwargs)
        if trainer.state.global_step + 1 < at_step:
            return out
        nan = torch.tensor(float("nan"))
        return (out[0] * nan, *out[1:]) if isinstance(out, tuple) else out * nan

    trainer.compute_loss = poisoned


@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_loss_stops_before_the_optimizer_step(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    args = case.args(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, gradient_accumulation_steps=2)
    trainer = case.trainer(tiny_model_dir, args)
    assert isinstance(trainer, FiniteLossGuard)
    _poison(trainer, at_step=3)
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss \(nan.* at global step 3:"):
        trainer.train()
    assert trainer.state.global_step == 2
    saves = sorted(f for f in os.listdir(tmp_path) if f.startswith("checkpoint-"))
    assert saves == ["checkpoint-1", "checkpoint-2"]  # nothing saved after the NaN
    now, saved = weights(trainer.model), load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(p).all() for p in now.values())
    for n, p in saved.items():  # the weights are step 2's: the poisoned gradient was never applied
        torch.testing.assert_close(now[n], p, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_gradient_with_a_finite_loss_stops_before_the_optimizer_step(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    args = case.args(tmp_path, max_steps=3, gradient_accumulation_steps=2, max_grad_norm=0.0)  # no clipping
    trainer = case.trainer(tiny_model_dir, args)
    losses = _record_losses(trainer)
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    nan, micro = torch.tensor(float("nan")), iter(range(1000))
    # Optimizer step 2's first micro-batch only: every loss is finite, the accumulated gradient is not.
    param.register_hook(lambda g: g * nan if trainer.state.global_step == 1 and next(micro) == 0 else g)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"Non-finite gradient \(the loss was finite\) at global step 2:"):
        trainer.train()
    assert trainer.state.global_step == 1 and len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved and all(torch.isfinite(p).all() for p in trainer.model.parameters())  # step 1 applied, not step 2


def _record_losses(trainer) -> list[float]:
    """Every ``compute_loss`` value from now on, appended to the returned list."""
    losses, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        out = compute_loss(model, inputs, *args, **kwargs)
        losses.append((out[0] if isinstance(out, tuple) else out).detach().float().mean().item())
        return out

    trainer.compute_loss = recording
    return losses
