"""Exact resume, every trainer: stopped at a checkpoint and resumed, a run ends as if it had never stopped.

Adam (the default optimizer) and a linear schedule, so the optimizer and scheduler state must come back too; the
method state as well: the precomputed reference log-probs (implicit PRM), the round and its reference (DDO, whose
resumed run must start round 2 from its own weights). Tolerance: fp32, rtol 1e-6 / atol 1e-7 on logged values and
weights: the resumed run repeats the same operations on the same numbers, so anything above rounding is lost state.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.reliability import CASES, losses, weights

STEPS, SAVE = 4, 2


def _run(case, model: str, output_dir: str, resume: str | None = None):
    args = case.args(
        output_dir,
        case.resume,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE,
        lr_scheduler_type="linear",
        learning_rate=5e-3,
    )
    trainer = case.trainer(model, args)
    steps = _StepCounter()
    trainer.add_callback(steps)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, steps.count


class _StepCounter(TrainerCallback):
    """Optimizer steps this run actually took (the log history of a resumed run includes the checkpoint's)."""

    def __init__(self) -> None:
        self.count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1


@pytest.mark.parametrize("name", list(CASES))
def test_resume_from_checkpoint_is_exact(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    full, _ = _run(case, tiny_model_dir, tmp_path / "full")
    checkpoint = str(tmp_path / "full" / f"checkpoint-{SAVE}")
    assert os.path.isdir(checkpoint)
    resumed, steps_taken = _run(case, tiny_model_dir, tmp_path / "resumed", resume=checkpoint)
    assert steps_taken == STEPS - SAVE  # it did resume, not restart

    logged_full, logged_resumed = losses(full, case.loss_metrics), losses(resumed, case.loss_metrics)
    assert [h["step"] for h in logged_resumed] == list(range(1, STEPS + 1))  # steps 1-2 come from the checkpoint
    for again, first in zip(logged_resumed, logged_full):
        assert again == pytest.approx(first, rel=1e-6, abs=1e-7), again["step"]
    assert logged_full[SAVE]["loss"] != pytest.approx(logged_full[SAVE - 1]["loss"], rel=1e-4)  # losses do move
    final_full, final_resumed = weights(full.model), weights(resumed.model)
    assert final_full.keys() == final_resumed.keys()
    for n, p in final_full.items():
        torch.testing.assert_close(final_resumed[n], p, rtol=1e-6, atol=1e-7, msg=n)
    at_checkpoint = load_file(os.path.join(checkpoint, "model.safetensors"))
    assert any(not torch.equal(at_checkpoint[n], final_resumed[n]) for n in at_checkpoint)  # steps 3-4 did train


def test_ddo_round_pool_survives_a_resume(tiny_model_dir, tmp_path):
    """8 rows, batch 4: epoch 2 (steps 3-4) reuses epoch 1's fakes, so a resume at step 2 needs the saved pool."""
    case = CASES["ddo"].with_config(fake_pool="round")
    data = case.dataset().select(range(8))

    def run(output_dir, resume=None):
        args = case.args(output_dir, max_steps=STEPS, save_strategy="steps", save_steps=SAVE, learning_rate=5e-3)
        trainer = case.trainer(tiny_model_dir, args, data)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", str(tmp_path / "full" / f"checkpoint-{SAVE}"))
    for again, first in zip(losses(resumed, case.loss_metrics), losses(full, case.loss_metrics)):
        assert again == pytest.approx(first, rel=1e-6, abs=1e-7), again["step"]
