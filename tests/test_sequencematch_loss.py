"""sequencematch_loss and action_nll against hand computations, the MLE identity, the shift behaviour, terminal and
truncation handling, masking, stability and argument checks (ALGORITHMS.md 3(a), 3(b), 3(f))."""

from __future__ import annotations

import math

import pytest
import torch

from trl_likelihood.losses import action_nll, sequence_nll, sequencematch_loss

EOS = 3

# Two rows, vocab 4, T = 2. Row 0: data, actions [2, EOS], terminated. Row 1: model rollout, one action [1], truncated
# (its second step and third state are padding).
LOGITS = [
    [[0.5, -1.0, 2.0, 0.0], [1.0, 0.0, -0.5, 1.5], [0.0, 0.3, -2.0, 2.5]],
    [[-0.2, 1.2, 0.4, 0.0], [2.0, -1.0, 0.0, 0.7], [9.0, 9.0, 9.0, 9.0]],
]
ACTIONS = [[2, EOS], [1, 0]]
MASK = [[True, True], [True, False]]


def _lse(row: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in row))


def _inputs(logits=LOGITS, actions=ACTIONS, mask=MASK, terminated=(True, False), is_data=(True, False)):
    return (
        torch.tensor(logits, requires_grad=True),
        torch.tensor(actions),
        torch.tensor(mask),
        torch.tensor(terminated),
        torch.tensor(is_data),
    )


def _random_batch(seed: int, batch: int = 4, width: int = 6, vocab: int = 7):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, width + 1, vocab, generator=gen)).requires_grad_()
    actions = torch.randint(0, vocab, (batch, width), generator=gen)
    lengths = torch.tensor([width, 1, 3, width - 2])[:batch]
    mask = torch.arange(width) < lengths[:, None]
    actions[torch.arange(batch), lengths - 1] = EOS  # every row ends with EOS; `terminated` says which ones count
    return logits, actions, mask, lengths


def _tail_by_loop(start: int, horizon: int, gamma: float) -> float:
    return sum(gamma**i for i in range(start, horizon))


def test_sequencematch_loss_by_hand_absorbing():
    gamma, chi2_coef, horizon = 0.9, 0.5, 4
    l0, l1 = LOGITS
    v0 = [_lse(s) for s in l0]  # V(u_0), V(u_1), V(u_2 = absorbing state after EOS)
    # row 0: steps 0, 1 then the absorbing self-loop EOS at steps 2, 3 (horizon 4), weights 1, .9, .81, .729
    r0 = [l0[0][2] - gamma * v0[1], l0[1][EOS] - gamma * v0[2], l0[2][EOS] - gamma * v0[2], l0[2][EOS] - gamma * v0[2]]
    dv0 = [v0[0] - gamma * v0[1], v0[1] - gamma * v0[2], (1 - gamma) * v0[2], (1 - gamma) * v0[2]]
    g0 = [1.0, 0.9, 0.81, 0.729]
    w0 = sum(g0)
    # row 1: truncated after one step, bootstraps from V(u_1); no tail
    r1 = l1[0][1] - gamma * _lse(l1[1])
    dv1 = _lse(l1[0]) - gamma * _lse(l1[1])
    lin0 = sum(g * r for g, r in zip(g0, r0)) / w0
    linear = -lin0  # only row 0 is data
    value = (sum(g * d for g, d in zip(g0, dv0)) / w0 + dv1) / 2
    chi2 = (sum(g * r * r for g, r in zip(g0, r0)) / w0 + r1 * r1) / 2

    terms = sequencematch_loss(*_inputs(), gamma=gamma, chi2_coef=chi2_coef, eos_token_id=EOS, horizon=horizon)
    assert terms.loss.dtype == torch.float32
    assert terms.loss.item() == pytest.approx(linear + value + chi2_coef * chi2, rel=1e-5)  # fp32 vs float64
    assert terms.linear.item() == pytest.approx(linear, rel=1e-5)
    assert terms.value.item() == pytest.approx(value, rel=1e-5)
    assert terms.chi2.item() == pytest.approx(chi2, rel=1e-5)
    assert terms.expert_reward.item() == pytest.approx(lin0, rel=1e-5)
    assert terms.rollout_reward.item() == pytest.approx(r1, rel=1e-5)
    assert terms.expert_value.item() == pytest.approx(v0[0], rel=1e-6)
    assert not terms.value.requires_grad and terms.loss.requires_grad


def test_sequencematch_loss_by_hand_zero_terminal_and_default_horizon():
    gamma, chi2_coef = 0.8, 0.25
    l0, l1 = LOGITS
    v0 = [_lse(s) for s in l0]
    r0 = [l0[0][2] - gamma * v0[1], l0[1][EOS] - 0.0]  # the value after EOS is 0
    dv0 = [v0[0] - gamma * v0[1], v0[1] - 0.0]
    g0 = [1.0, 0.8]
    r1 = l1[0][1] - gamma * _lse(l1[1])
    dv1 = _lse(l1[0]) - gamma * _lse(l1[1])
    linear = -sum(g * r for g, r in zip(g0, r0)) / 1.8
    value = (sum(g * d for g, d in zip(g0, dv0)) / 1.8 + dv1) / 2
    chi2 = (sum(g * r * r for g, r in zip(g0, r0)) / 1.8 + r1 * r1) / 2
    terms = sequencematch_loss(*_inputs(), gamma=gamma, chi2_coef=chi2_coef, terminal="zero", eos_token_id=EOS)
    assert terms.loss.item() == pytest.approx(linear + value + chi2_coef * chi2, rel=1e-5)
    # "absorbing" with the default horizon T = 2 has an empty tail for row 0, but still bootstraps from V(u_2)
    absorbing = sequencematch_loss(*_inputs(), gamma=gamma, chi2_coef=chi2_coef, eos_token_id=EOS)
    r0_abs = [r0[0], l0[1][EOS] - gamma * v0[2]]
    dv0_abs = [dv0[0], v0[1] - gamma * v0[2]]
    expected = (
        -sum(g * r for g, r in zip(g0, r0_abs)) / 1.8
        + (sum(g * d for g, d in zip(g0, dv0_abs)) / 1.8 + dv1) / 2
        + chi2_coef * (sum(g * r * r for g, r in zip(g0, r0_abs)) / 1.8 + r1 * r1) / 2
    )
    assert absorbing.loss.item() == pytest.approx(expected, rel=1e-5)


def _discounted_nll(logits, actions, lengths, gamma, tail=None):
    """Reference: mean over rows of sum_i g_i * -log softmax(u_i)[a_i] / sum g, by explicit loops."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    rows = []
    for b, length in enumerate(lengths.tolist()):
        num = sum(gamma**i * -logprobs[b, i, actions[b, i]] for i in range(length))
        den = sum(gamma**i for i in range(length))
        if tail is not None:  # the absorbing state's self-loop EOS at steps length .. horizon-1
            weight = _tail_by_loop(length, tail, gamma)
            num, den = num + weight * -logprobs[b, length, EOS], den + weight
        rows.append(num / den)
    return torch.stack(rows).mean()


@pytest.mark.parametrize("terminated", [(True, True, True, True), (True, False, True, False)])
def test_mle_identity_zero_terminal(terminated):
    logits, actions, mask, lengths = _random_batch(0)
    gamma = 0.95
    got = sequencematch_loss(
        logits, actions, mask, torch.tensor(terminated), torch.ones(4, dtype=torch.bool),
        gamma=gamma, chi2_coef=0.0, terminal="zero", eos_token_id=EOS,
    ).loss  # fmt: skip
    expected = _discounted_nll(logits, actions, lengths, gamma)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(got, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("horizon", [None, 9, 300])
def test_mle_identity_absorbing_includes_the_tail(horizon):
    logits, actions, mask, lengths = _random_batch(1)
    gamma = 0.99
    got = sequencematch_loss(
        logits, actions, mask, torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool),
        gamma=gamma, chi2_coef=0.0, eos_token_id=EOS, horizon=horizon,
    ).loss  # fmt: skip
    expected = _discounted_nll(logits, actions, lengths, gamma, tail=horizon or actions.shape[1])
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    without_tail = _discounted_nll(logits, actions, lengths, gamma)
    assert abs(expected - without_tail) > 1e-3  # the tail terms matter (rows shorter than the horizon)
    (grad,) = torch.autograd.grad(got, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def _terms(logits, actions, mask, terminated, is_data, **kwargs):
    return sequencematch_loss(logits, actions, mask, terminated, is_data, eos_token_id=EOS, **kwargs)


@pytest.mark.parametrize("c", [-40.0, 25.0])
def test_shift_absorbing_moves_every_reward_by_one_minus_gamma_c(c):
    logits, actions, mask, _ = _random_batch(2)
    logits = logits.detach()
    terminated = torch.tensor([True, True, False, True])
    is_data = torch.tensor([True, False, True, False])
    gamma, kwargs = 0.998, dict(gamma=0.998, chi2_coef=0.5, horizon=1000)  # a long padded horizon
    base = _terms(logits, actions, mask, terminated, is_data, **kwargs)
    shifted = _terms(logits + c, actions, mask, terminated, is_data, **kwargs)
    delta = (1 - gamma) * c
    torch.testing.assert_close(action_nll(logits + c, actions, mask), action_nll(logits, actions, mask))  # same pi
    assert shifted.expert_reward.item() == pytest.approx(base.expert_reward.item() + delta, abs=2e-4)
    assert shifted.rollout_reward.item() == pytest.approx(base.rollout_reward.item() + delta, abs=2e-4)
    assert shifted.value.item() == pytest.approx(base.value.item() + delta, abs=2e-4)
    assert shifted.expert_value.item() == pytest.approx(base.expert_value.item() + c, abs=1e-4)
    # every r moves by the same delta: E[(r + delta)^2] = E[r^2] + 2 delta E[r] + delta^2 (2 data, 2 model rows)
    mean_r = (base.expert_reward + base.rollout_reward).item() / 2
    assert shifted.chi2.item() == pytest.approx(base.chi2.item() + 2 * delta * mean_r + delta**2, abs=2e-3)
    # with V(terminal) = 0 the reward of the EOS step moves by the whole c instead: data row 0 ends with EOS after
    # 6 steps (weight gamma^5 of sum_{i<6} gamma^i), data row 2 is truncated
    zero = _terms(logits, actions, mask, terminated, is_data, gamma=gamma, terminal="zero")
    zero_shifted = _terms(logits + c, actions, mask, terminated, is_data, gamma=gamma, terminal="zero")
    eos_share = gamma**5 / sum(gamma**i for i in range(6)) / 2
    expected = delta + (c - delta) * eos_share
    assert zero_shifted.expert_reward.item() - zero.expert_reward.item() == pytest.approx(expected, abs=2e-4)


def test_kl_divergence_uses_a_detached_exp_weight():
    gamma = 0.9
    logits = torch.tensor([[[0.2, 1.0, -0.5, 0.3], [0.0, 0.5, 1.0, -1.0]]], requires_grad=True)
    actions, mask = torch.tensor([[1]]), torch.tensor([[True]])
    done, data = torch.tensor([True]), torch.tensor([True])
    terms = _terms(logits, actions, mask, done, data, gamma=gamma, chi2_coef=0.0, divergence="kl", terminal="zero")
    r = 1.0  # Q(u_0, a=1) - gamma * 0: the row is terminated and V(terminal) = 0
    weight = math.exp(-r - 1)
    v0 = _lse([0.2, 1.0, -0.5, 0.3])
    assert terms.loss.item() == pytest.approx(-weight * r + v0, rel=1e-6)
    terms.loss.backward()
    softmax = torch.softmax(logits.detach()[0, 0], -1)
    expected = softmax - weight * torch.nn.functional.one_hot(torch.tensor(1), 4)  # d(-w r)/dQ = -w, w detached
    torch.testing.assert_close(logits.grad[0, 0], expected, rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(logits.grad[0, 1]) == 0  # terminal: u_1 is never used
    chi2 = _terms(logits, actions, mask, done, data, gamma=gamma, chi2_coef=0.0, terminal="zero")
    assert chi2.loss.item() == pytest.approx(-r + v0, rel=1e-6)  # chi2's linear term has weight 1


def test_truncated_rollouts_bootstrap_from_the_last_state():
    gamma = 0.9
    logits, actions, mask, lengths = _random_batch(3, batch=2)
    data = torch.tensor([True, False])
    truncated = torch.tensor([False, False])
    by_terminal = [
        _terms(logits, actions, mask, truncated, data, gamma=gamma, terminal=t, horizon=50)
        for t in ("zero", "absorbing")
    ]
    torch.testing.assert_close(by_terminal[0].loss, by_terminal[1].loss)  # no terminal treatment, no tail
    (grad,) = torch.autograd.grad(by_terminal[0].loss, logits)
    assert all(grad[b, n].abs().sum() > 0 for b, n in enumerate(lengths.tolist()))  # V(u_T) is bootstrapped
    # by hand for the one-step row 1: r = Q(u_0, EOS) - gamma V(u_1), dV = V(u_0) - gamma V(u_1)
    row = logits.detach()[1].tolist()
    r1 = row[0][EOS] - gamma * _lse(row[1])
    assert by_terminal[0].rollout_reward.item() == pytest.approx(r1, rel=1e-5)
    done = _terms(logits, actions, mask, torch.tensor([True, True]), data, gamma=gamma, terminal="zero")
    (grad,) = torch.autograd.grad(done.loss, logits)
    assert all(grad[b, n].abs().sum() == 0 for b, n in enumerate(lengths.tolist()))  # V(terminal) = 0: unused


@pytest.mark.parametrize("terminal", ["absorbing", "zero"])
@pytest.mark.parametrize("divergence", ["chi2", "kl"])
def test_padded_steps_change_nothing(terminal, divergence):
    logits, actions, mask, lengths = _random_batch(4)
    terminated, is_data = torch.tensor([True, False, True, True]), torch.tensor([True, True, False, False])
    kwargs = dict(gamma=0.95, divergence=divergence, terminal=terminal)
    base = _terms(logits, actions, mask, terminated, is_data, **kwargs)
    (grad,) = torch.autograd.grad(base.loss, logits)
    state_pad = torch.arange(logits.shape[1]) > lengths[:, None]  # states after u_{T_b}
    assert grad[state_pad].abs().sum() == 0
    other_logits = torch.where(state_pad[..., None], 50 * torch.randn_like(logits), logits.detach())
    other_actions = torch.where(mask, actions, torch.randint_like(actions, 0, 7))
    other = _terms(other_logits, other_actions, mask, terminated, is_data, **kwargs)
    for name in ("loss", "linear", "value", "chi2", "expert_reward", "rollout_reward", "expert_value"):
        torch.testing.assert_close(getattr(other, name), getattr(base, name), rtol=0, atol=0)
    torch.testing.assert_close(action_nll(other_logits, other_actions, mask), action_nll(logits, actions, mask))


@pytest.mark.parametrize("scale", [1e4, -1e4, 1e6])
@pytest.mark.parametrize("divergence", ["chi2", "kl"])
@pytest.mark.parametrize("terminal", ["absorbing", "zero"])
def test_huge_logits_give_finite_loss_and_gradients(scale, divergence, terminal):
    logits, actions, mask, _ = _random_batch(5)
    logits = (logits.detach() * scale).requires_grad_()
    terms = _terms(
        logits, actions, mask, torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False]),
        gamma=0.998, divergence=divergence, terminal=terminal, horizon=64,
    )  # fmt: skip
    terms.loss.backward()
    assert math.isfinite(terms.loss.item()) and torch.isfinite(logits.grad).all()
    assert all(math.isfinite(getattr(terms, n).item()) for n in ("linear", "value", "chi2", "expert_reward"))


def test_bf16_inputs_are_upcast_and_empty_groups():
    logits, actions, mask, terminated, is_data = _inputs()
    terms = sequencematch_loss(
        logits.detach().bfloat16(),
        actions,
        mask,
        terminated,
        torch.tensor([False, False]),
        gamma=0.9,
        eos_token_id=EOS,
    )
    assert terms.loss.dtype == torch.float32 and math.isfinite(terms.loss.item())
    assert terms.linear.item() == 0.0  # no data rows: no linear term
    assert math.isnan(terms.expert_reward.item()) and math.isnan(terms.expert_value.item())
    assert math.isfinite(terms.rollout_reward.item())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(gamma=0.0), "`gamma`"),
        (dict(gamma=1.5), "`gamma`"),
        (dict(gamma=-0.1), "`gamma`"),
        (dict(gamma=0.9, chi2_coef=-0.5), "`chi2_coef`"),
        (dict(gamma=0.9, divergence="js"), "`divergence`"),
        (dict(gamma=0.9, terminal="done"), "`terminal`"),
        (dict(gamma=0.9, horizon=1), "`horizon`"),  # row 0 has 2 real steps
        (dict(gamma=0.9, horizon=-3), "`horizon`"),
        (dict(gamma=0.9, eos_token_id=None), "`eos_token_id`"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    kwargs = {"eos_token_id": EOS, **kwargs}
    with pytest.raises(ValueError, match=message):
        sequencematch_loss(*_inputs(), **kwargs)


def test_bad_shapes_raise():
    logits, actions, mask, terminated, is_data = _inputs()
    with pytest.raises(ValueError, match="state_logits"):
        sequencematch_loss(logits[:, :2], actions, mask, terminated, is_data, gamma=0.9, eos_token_id=EOS)
    with pytest.raises(ValueError, match="`action_mask`"):
        sequencematch_loss(logits, actions, mask[:, :1], terminated, is_data, gamma=0.9, eos_token_id=EOS)
    with pytest.raises(ValueError, match="`is_data`"):
        sequencematch_loss(logits, actions, mask, terminated, is_data[:1], gamma=0.9, eos_token_id=EOS)


def test_horizon_is_accepted_for_gamma_one():
    # gamma = 1: the tail weight is the number of tail steps, horizon - T_b; dV on the tail is 0
    l0, l1 = LOGITS
    v0 = [_lse(s) for s in l0]
    terms = sequencematch_loss(*_inputs(), gamma=1.0, chi2_coef=0.0, eos_token_id=EOS, horizon=5)
    tail = 3 * (v0[2] - l0[2][EOS])  # steps 2, 3, 4 each add -log pi(EOS | absorbing)
    row0 = (v0[0] - l0[0][2] + v0[1] - l0[1][EOS] + tail) / 5
    row1_value = _lse(l1[0]) - _lse(l1[1])
    assert terms.loss.item() == pytest.approx(row0 + row1_value / 2 - (v0[0] - v0[2]) / 5 / 2, rel=1e-5)


def test_action_nll_by_hand():
    l0, l1 = LOGITS
    nll = [_lse(l0[0]) - l0[0][2], _lse(l0[1]) - l0[1][EOS], _lse(l1[0]) - l1[0][1]]  # the padded step is skipped
    logits, actions, mask, _, _ = _inputs()
    assert action_nll(logits, actions, mask).item() == pytest.approx(sum(nll) / 3, rel=1e-6)
    assert action_nll(logits, actions, mask, num_tokens=6).item() == pytest.approx(sum(nll) / 6, rel=1e-6)
    assert action_nll(logits, actions, torch.zeros_like(mask)).item() == 0.0


def test_minus_inf_logits_of_padded_actions_stay_out():
    # e.g. a state whose forbidden <bkspc> logit was set to -inf: a padded step may point at it
    logits, actions, mask, terminated, is_data = _inputs()
    low = logits.detach().clone()
    low[1, 1, 0] = -1e4  # row 1's padded step takes action 0 at state u_1 (a real state: it is bootstrapped)
    base = sequencematch_loss(low, actions, mask, terminated, is_data, gamma=0.9, eos_token_id=EOS)
    blocked = low.clone()
    blocked[1, 1, 0] = float("-inf")  # the same V(u_1) in fp32
    blocked.requires_grad_()
    terms = sequencematch_loss(blocked, actions, mask, terminated, is_data, gamma=0.9, eos_token_id=EOS)
    terms.loss.backward()
    torch.testing.assert_close(terms.loss, base.loss, rtol=1e-6, atol=0)
    assert torch.isfinite(blocked.grad).all()


def test_action_logps_share_the_pass_with_bc():
    """``terms.action_logps`` is log pi(a_i | u_i) = Q - V with its graph: BC from it equals ``action_nll``."""
    l0, l1 = LOGITS
    logits, actions, mask, terminated, is_data = _inputs()
    terms = sequencematch_loss(logits, actions, mask, terminated, is_data, gamma=0.9, eos_token_id=EOS)
    by_hand = [[l0[0][2] - _lse(l0[0]), l0[1][EOS] - _lse(l0[1])], [l1[0][1] - _lse(l1[0]), 0.0]]  # padding: 0
    torch.testing.assert_close(terms.action_logps, torch.tensor(by_hand), rtol=1e-6, atol=1e-6)
    shared = sequence_nll(terms.action_logps, mask)
    torch.testing.assert_close(shared, action_nll(logits, actions, mask, reduction="sequence"), rtol=1e-6, atol=0)
    shared.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert sequence_nll(terms.action_logps, torch.zeros_like(mask)).item() == 0.0  # no step: no row
