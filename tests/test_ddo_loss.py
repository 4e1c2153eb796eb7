"""ddo_loss against a hand computation, the theta == theta_ref identity, stability and unpaired batches."""

from __future__ import annotations

import math

import pytest
import torch

from trl_likelihood.losses import ddo_loss


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_ddo_loss_by_hand():
    real_pol, real_ref = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])  # d_real = [1, -1]
    fake_pol, fake_ref = torch.tensor([-6.0, -2.0]), torch.tensor([-4.0, -2.5])  # d_fake = [-2, 0.5]
    alpha, beta = 2.0, 0.5
    real = -(math.log(_sig(0.5)) + math.log(_sig(-0.5))) / 2
    fake = -(math.log(_sig(1.0)) + math.log(_sig(-0.25))) / 2  # logsigmoid(-beta * d_fake)
    expected = (real + alpha * fake) / 2.0
    got = ddo_loss(real_pol, real_ref, fake_pol, fake_ref, alpha=alpha, beta=beta)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
def test_ddo_loss_at_reference_is_log2_identity(alpha):
    logps = torch.randn(5) * 10
    fake = torch.randn(3) * 10
    got = ddo_loss(logps, logps.clone(), fake, fake.clone(), alpha=alpha, beta=0.1)
    assert got.item() == pytest.approx((1 + alpha) * math.log(2) / max(alpha, 1), rel=1e-6)


def test_ddo_loss_gradients_and_detached_reference():
    real_pol = torch.tensor([-3.0, -5.0], requires_grad=True)
    fake_pol = torch.tensor([-6.0], requires_grad=True)
    real_ref = torch.tensor([-4.0, -4.0], requires_grad=True)
    fake_ref = torch.tensor([-4.0], requires_grad=True)
    alpha, beta = 3.0, 0.5
    ddo_loss(real_pol, real_ref, fake_pol, fake_ref, alpha=alpha, beta=beta).backward()
    # d/dd -logsigmoid(beta d) = -beta (1 - sigmoid(beta d)); d/dd -logsigmoid(-beta d) = beta sigmoid(beta d)
    d_real = torch.tensor([1.0, -1.0])
    expected_real = -beta * (1 - torch.sigmoid(beta * d_real)) / 2 / alpha
    expected_fake = alpha * beta * torch.sigmoid(torch.tensor([beta * -2.0])) / alpha
    torch.testing.assert_close(real_pol.grad, expected_real, rtol=1e-6, atol=0)
    torch.testing.assert_close(fake_pol.grad, expected_fake, rtol=1e-6, atol=0)
    assert real_ref.grad is None and fake_ref.grad is None


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ddo_loss_is_stable_for_huge_logratios(sign):
    real_pol = torch.tensor([sign * 1e5, -sign * 1e5], requires_grad=True)  # beta * d = +-1e4
    fake_pol = torch.tensor([-sign * 1e5, sign * 1e5], requires_grad=True)
    zeros = torch.zeros(2)
    loss = ddo_loss(real_pol, zeros, fake_pol, zeros, alpha=1.0, beta=0.1)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(
        1e4, rel=1e-6
    )  # one wrong row per side: 5e3 + 5e3
    assert torch.isfinite(real_pol.grad).all() and torch.isfinite(fake_pol.grad).all()


def test_ddo_loss_unequal_batch_sizes_are_separate_means():
    real = torch.tensor([0.0, 0.0, 0.0, 8.0])
    fake = torch.tensor([-4.0])
    beta = 0.25
    expected = -(3 * math.log(0.5) + math.log(_sig(2.0))) / 4 - math.log(_sig(1.0))
    got = ddo_loss(real, torch.zeros(4), fake, torch.zeros(1), alpha=1.0, beta=beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("alpha", "beta", "message"), [(-0.1, 0.1, "`alpha`"), (1.0, 0.0, "`beta`"), (1, -1, "`beta`")]
)
def test_ddo_loss_rejects_bad_hyperparameters(alpha, beta, message):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=message):
        ddo_loss(x, x, x, x, alpha=alpha, beta=beta)
