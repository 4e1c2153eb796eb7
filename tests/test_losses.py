"""Losses against hand computations and their documented reductions, before any trainer runs them."""

from __future__ import annotations

import math

import pytest
import torch

from trl_likelihood.losses import mixce_loss, mixce_token_loss, token_logps_from_logits


def test_mixce_token_loss_by_hand():
    logps, mask = torch.tensor([[0.5, 0.25, 0.9]]).log(), torch.tensor([[1, 1, 0]])
    # weights eta + (1 - eta) q: 0.5 + 0.5 * 0.5 = 0.75 and 0.5 + 0.5 * 0.25 = 0.625; the third token is masked
    expected = (0.75 * math.log(2) + 0.625 * math.log(4)) / 2
    assert mixce_token_loss(logps, mask, eta=0.5).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.1, 0.7, 1.0])
def test_mixce_token_loss_several_eta_by_hand(eta):
    q = [0.2, 0.6, 0.9, 0.05]
    logps = torch.tensor([q[:2], q[2:]]).log()
    mask = torch.tensor([[True, True], [True, False]])
    kept = [0.2, 0.6, 0.9]
    expected = sum(-(eta + (1 - eta) * p) * math.log(p) for p in kept) / 3
    assert mixce_token_loss(logps, mask, eta=eta).item() == pytest.approx(expected, rel=1e-6)


def test_mixce_identities():
    torch.manual_seed(0)
    logps = torch.log_softmax(torch.randn(3, 6, 11), dim=-1)[..., 0].requires_grad_()
    mask = torch.rand(3, 6) > 0.3
    torch.testing.assert_close(mixce_token_loss(logps, mask, eta=1.0), -logps[mask].mean(), rtol=1e-6, atol=0)
    mixce_token_loss(logps, mask, eta=0.3).backward()  # dropping .detach() changes this gradient, not the value
    expected = -(0.3 + 0.7 * logps.detach().exp()) * mask / mask.sum()
    torch.testing.assert_close(logps.grad, expected, rtol=1e-6, atol=1e-7)


def test_mixce_eta_zero_is_dft():
    torch.manual_seed(1)
    logps = torch.log_softmax(torch.randn(2, 5, 7), dim=-1)[..., 3]
    mask = torch.ones(2, 5, dtype=torch.bool)
    dft = -(logps.exp() * logps).mean()  # TRL's loss_type="dft": -sg(p) log p, token mean
    torch.testing.assert_close(mixce_token_loss(logps, mask, eta=0.0), dft, rtol=1e-6, atol=0)


def test_mixce_token_loss_ignores_minus_inf_and_divides_by_given_count():
    logps = torch.tensor([[-1.0, float("-inf")]])
    mask = torch.tensor([[True, False]])
    assert mixce_token_loss(logps, mask, eta=1.0).item() == pytest.approx(1.0)
    assert mixce_token_loss(logps, mask, eta=1.0, num_tokens=4).item() == pytest.approx(0.25)
    empty = mixce_token_loss(logps, torch.zeros_like(mask), eta=0.5)
    assert empty.item() == 0.0  # an all-masked batch is a finite zero, not 0/0


def test_mixce_token_loss_upcasts_to_fp32():
    logps = torch.tensor([[-0.5, -2.0]], dtype=torch.bfloat16)
    out = mixce_token_loss(logps, torch.ones(1, 2), eta=0.5)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_mixce_rejects_eta_outside_unit_interval(eta):
    with pytest.raises(ValueError, match=r"`eta` must be in \[0, 1\]"):
        mixce_token_loss(torch.zeros(1, 1), torch.ones(1, 1), eta=eta)


def test_mixce_loss_from_logits_by_hand_with_shift_and_padding():
    # vocab 3; position t predicts labels[t + 1]; the first label is never a target; -100 marks padding
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[-100, 2, -100]])
    q = torch.softmax(logits[0, 0], -1)[2].item()  # only target: token 2 predicted from position 0
    eta = 0.4
    expected = -(eta + (1 - eta) * q) * math.log(q)
    assert mixce_loss(logits, labels, eta=eta).item() == pytest.approx(expected, rel=1e-6)


def test_mixce_loss_eta_one_equals_hf_causal_lm_nll():
    torch.manual_seed(2)
    logits = torch.randn(3, 7, 13)
    labels = torch.randint(0, 13, (3, 7))
    labels[0, 4:] = -100  # right padding
    labels[2, :3] = -100  # a prompt that is not trained
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(mixce_loss(logits, labels, eta=1.0), nll, rtol=1e-6, atol=0)


def test_token_logps_from_logits_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Expected logits"):
        token_logps_from_logits(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
