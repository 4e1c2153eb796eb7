"""Implicit-PRM losses against hand computations, their stability, and the paired identity."""

from __future__ import annotations

import math

import pytest
import torch

from trl_likelihood.losses import implicit_prm_dpo_loss, implicit_prm_loss


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_implicit_prm_loss_by_hand():
    policy = torch.tensor([-10.0, -12.0, -7.0])
    ref = torch.tensor([-11.0, -10.0, -7.0])
    labels = torch.tensor([1, 0, 1])
    beta = 0.5
    # beta * d = 0.5, -1.0, 0.0 ; labels 1, 0, 1
    expected = -(_log_sigmoid(0.5) + _log_sigmoid(1.0) + _log_sigmoid(0.0)) / 3
    assert implicit_prm_loss(policy, ref, labels, beta).item() == pytest.approx(expected, rel=1e-6)
    bool_labels = implicit_prm_loss(policy, ref, labels.bool(), beta)
    assert bool_labels.item() == pytest.approx(expected, rel=1e-6)


def test_implicit_prm_loss_at_reference_is_log2_and_gradient_follows_labels():
    policy = torch.tensor([-3.0, -4.0], requires_grad=True)
    loss = implicit_prm_loss(policy, policy.detach().clone(), torch.tensor([1.0, 0.0]), beta=0.2)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    loss.backward()
    # d/d s_i of -log s(+-beta d) at d = 0 is -+beta / 2 / B
    torch.testing.assert_close(policy.grad, torch.tensor([-0.05, 0.05]), rtol=1e-6, atol=0)


def test_implicit_prm_loss_stable_for_huge_logratios():
    policy = torch.tensor([2e5, -2e5, 2e5, -2e5], requires_grad=True)
    ref = torch.zeros(4)
    labels = torch.tensor([1, 1, 0, 0])
    loss = implicit_prm_loss(policy, ref, labels, beta=0.05)  # |beta * d| = 1e4
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(policy.grad).all()
    # the two wrong-signed rows each cost 1e4 nats; the right-signed ones cost ~0
    assert loss.item() == pytest.approx(2e4 / 4, rel=1e-6)


def test_implicit_prm_dpo_loss_by_hand_and_stability():
    cw, rw = torch.tensor([-5.0, -6.0]), torch.tensor([-6.0, -6.0])
    cl, rl = torch.tensor([-8.0, -5.0]), torch.tensor([-7.0, -6.0])
    beta = 1.0
    # d_w = 1, 0 ; d_l = -1, 1 ; margins 2, -1
    expected = -(_log_sigmoid(2.0) + _log_sigmoid(-1.0)) / 2
    assert implicit_prm_dpo_loss(cw, rw, cl, rl, beta).item() == pytest.approx(expected, rel=1e-6)
    big = torch.tensor([-1e6], requires_grad=True)
    loss = implicit_prm_dpo_loss(big, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.01)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(big.grad).all()
