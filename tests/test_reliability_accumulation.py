"""Gradient accumulation, every trainer: k micro-batches with accumulation make the same update as one batch k times
larger, so each loss is normalised by the right count (global tokens for token means, sequences for sequence means).

SGD (Adam divides by sqrt(v), which turns float noise on near-zero gradients into O(lr) differences) and no dropout.
The variants here are the ones the trainers' own tests leave out (see ``tests/reliability.py``). Micro-batches are
padded to their own longest row, the big batch to its longest: the match also shows padding is never scored.
Tolerances: weights rtol 1e-5 / atol 1e-6 (fp32 sums in another order); logged values atol 1e-5, because a reward
or log-ratio is a difference of two sequence log-prob sums of about -40, which carries about 2e-6 of rounding.
"""

from __future__ import annotations

import pytest
import torch

from tests.reliability import CASES, losses, weights

OPT = dict(max_steps=2, learning_rate=0.5, optim="sgd")


@pytest.mark.parametrize("name", list(CASES))
def test_accumulation_equals_one_big_batch(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    runs = {}
    for label, batch in (("big", dict(per_device_train_batch_size=8)), ("acc", dict(per_device_train_batch_size=4))):
        accumulation = 1 if label == "big" else 2
        args = case.args(tmp_path / label, case.accumulation, gradient_accumulation_steps=accumulation, **OPT, **batch)
        trainer = case.trainer(tiny_model_dir, args)
        if hasattr(args, "disable_dropout"):
            assert args.disable_dropout
        trainer.train()
        runs[label] = trainer
    logged_big, logged_acc = losses(runs["big"], case.loss_metrics), losses(runs["acc"], case.loss_metrics)
    assert len(logged_big) == len(logged_acc) == 2
    for big, acc in zip(logged_big, logged_acc):
        assert acc == pytest.approx(big, rel=1e-5, abs=1e-5), acc["step"]
    start = weights(case.trainer(tiny_model_dir, case.args(tmp_path / "init", case.accumulation, **OPT)).model)
    big, acc = weights(runs["big"].model), weights(runs["acc"].model)
    assert any(not torch.equal(big[n], start[n]) for n in start)  # the updates are not zero
    for n, p in big.items():
        torch.testing.assert_close(acc[n], p, rtol=1e-5, atol=1e-6, msg=n)
