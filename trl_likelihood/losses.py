"""Every training objective of trl-likelihood as a pure function on tensors: no model, no trainer.

Trainers gather log-probabilities and masks and call these; tests check each against a hand computation first.
All arithmetic is done in fp32, whatever the input dtype. Maths and sources: ALGORITHMS.md (section per method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def mixce_token_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    eta: float,
    num_tokens: torch.Tensor | int | None = None,
) -> torch.Tensor:
    r"""MixCE token loss ``-[eta + (1 - eta) * sg(q_t)] * log q_t``, summed over target tokens and divided.

    Args:
        logps: ``(B, T)`` log-probabilities ``log q_t`` of the target tokens, any float dtype (upcast to fp32 here).
        mask: ``(B, T)``, true on the tokens being trained (completion; not prompt, not padding).
        eta: weight of the forward (MLE) term, in ``[0, 1]``.
        num_tokens: divisor of the sum; ``None`` is ``mask.sum()`` (token mean). Trainers pass the global count
            so that gradient accumulation and several processes give the same gradient as one big batch.

    Returns:
        A scalar in fp32. ``eta=1`` is exactly the token-mean NLL and ``eta=0`` is DFT. ``sg(q_t)`` is detached, so
        ``d loss / d log q_t = -(eta + (1 - eta) q_t) / num_tokens`` (ALGORITHMS.md 2(a), pitfall 3).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must be in [0, 1], got {eta}.")
    keep = mask.bool()
    logps = logps.float().masked_fill(~keep, 0.0)  # ignored positions may hold -inf, and 0 * -inf is nan
    weight = eta + (1.0 - eta) * logps.detach().exp()
    denom = keep.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=logps.device)
    return -(weight * logps).sum() / denom.clamp(min=1)


def token_logps_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift causal-LM ``logits`` ``(B, T, V)`` and ``labels`` ``(B, T)``; return fp32 ``(logps, mask)``, ``(B, T-1)``.

    ``labels`` follow the Hugging Face convention: same positions as ``input_ids``, ``ignore_index`` where no loss.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    targets = labels[:, 1:]
    mask = targets != ignore_index
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    logps = logprobs.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(~mask, 0.0), mask


def mixce_loss(
    logits: torch.Tensor, labels: torch.Tensor, eta: float, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    r"""MixCE loss from full logits: mean over target tokens of ``-(eta + (1 - eta) * sg(q_t)) * log q_t``.

    Zhang et al., "MixCE: Training Autoregressive Language Models by Mixing Forward and Reverse Cross-Entropies",
    ACL 2023. The reverse cross-entropy is replaced by its self-reinforced per-token surrogate, as in the official
    code (ALGORITHMS.md 2(a)).

    Args:
        logits: ``(B, T, V)`` causal-LM logits, any float dtype (computed in fp32 here).
        labels: ``(B, T)`` in the Hugging Face convention (same positions as ``input_ids``; shifted here;
            ``ignore_index`` skipped).
        eta: weight of the forward (MLE) term, in ``[0, 1]``; ``1.0`` is exactly the token-mean NLL.

    The trainer never builds these logits: it feeds TRL's fused log-probabilities to [`mixce_token_loss`].
    """
    logps, mask = token_logps_from_logits(logits, labels, ignore_index)
    return mixce_token_loss(logps, mask, eta)


def implicit_prm_loss(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, beta: float
) -> torch.Tensor:
    r"""Implicit-PRM cross-entropy on response-level labels: ``-[l log s(beta d) + (1 - l) log s(-beta d)]``, mean.

    Yuan et al., "Free Process Rewards without Process Labels", 2024, arXiv:2412.01981 (ALGORITHMS.md 4(a)). The
    outcome reward ``r = beta * d`` with ``d = log pi(y) - log pi_ref(y)`` is trained as a logit, so its partial sums
    at step ends are process rewards.

    Args:
        policy_logps: ``(B,)`` summed log-probs of the response tokens under the policy (no length normalisation).
        ref_logps: ``(B,)`` the same under the frozen reference (detached here).
        labels: ``(B,)`` in {0, 1} (bool or number): 1 for a correct response.
        beta: scale of the reward, > 0.

    Returns:
        A scalar in fp32. ``logsigmoid`` keeps it finite for ``|beta * d|`` up to 1e4 and beyond (the official
        ``BCELoss(sigmoid(z))`` clamps the log at -100).
    """
    z = beta * (policy_logps.float() - ref_logps.detach().float())
    y = labels.to(z.dtype)
    return -(y * F.logsigmoid(z) + (1.0 - y) * F.logsigmoid(-z)).mean()


def implicit_prm_dpo_loss(
    chosen_policy_logps: torch.Tensor,
    chosen_ref_logps: torch.Tensor,
    rejected_policy_logps: torch.Tensor,
    rejected_ref_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    r"""Paired implicit-PRM loss ``-logsigmoid(beta * (d_w - d_l))``, batch mean; ``d = log pi - log pi_ref`` (sums).

    All inputs are ``(B,)``; the reference terms are detached. Pairs are whole responses (correct x incorrect of one
    prompt), not steps (ALGORITHMS.md 4(f), issue #4 of the official repository).
    """
    d_w = chosen_policy_logps.float() - chosen_ref_logps.detach().float()
    d_l = rejected_policy_logps.float() - rejected_ref_logps.detach().float()
    return -F.logsigmoid(beta * (d_w - d_l)).mean()


def stepwise_prm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_labelled: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Explicit (stepwise) PRM loss: cross-entropy of a 2-way token head at the labelled positions (each step's last
    token), summed and divided by ``num_labelled``. Uesato et al., 2022, arXiv:2211.14275; TRL's former PRMTrainer.

    Args:
        logits: ``(B, T, 2)``, any float dtype (upcast to fp32 here).
        labels: ``(B, T)``, ``0``/``1`` at step ends and ``-100`` elsewhere.
        num_labelled: the divisor; ``None`` is this batch's labelled count (a step mean, ``F.cross_entropy``'s).
    Returns:
        A scalar in fp32, in nats per step.
    """
    mask = labels != -100
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    denom = mask.sum() if num_labelled is None else torch.as_tensor(num_labelled, device=logits.device)
    return -logps.masked_fill(~mask, 0.0).sum() / denom.clamp(min=1)


def ddo_loss(
    real_policy_logps: torch.Tensor,
    real_ref_logps: torch.Tensor,
    fake_policy_logps: torch.Tensor,
    fake_ref_logps: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.1,
) -> torch.Tensor:
    r"""DDO loss ``-[mean_real logsigmoid(beta d) + alpha mean_fake logsigmoid(-beta d)] / max(alpha, 1)``.

    Zheng et al., "Direct Discriminative Optimization: Your Likelihood-Based Visual Generative Model is Secretly a GAN
    Discriminator", ICML 2025, arXiv:2503.01103 (ALGORITHMS.md 5(a)). The discriminator is
    ``sigmoid(beta * d)`` with ``d = log p_theta(x) - log p_ref(x)``: real data should score high, reference samples
    (fakes) low. Unpaired: the two means are separate, so the real and fake batches may differ in size.

    Args:
        real_policy_logps: ``(B_real,)`` summed log-probs of the real sequences under the policy.
        real_ref_logps: ``(B_real,)`` the same under the frozen reference (detached here).
        fake_policy_logps: ``(B_fake,)`` summed log-probs of the reference samples under the policy.
        fake_ref_logps: ``(B_fake,)`` the same under the reference (detached here).
        alpha: weight of the fake term, ``>= 0``; dividing by ``max(alpha, 1)`` keeps the scale for ``alpha > 1``.
        beta: scale of the log-ratio, ``> 0``; it must bring ``beta * d`` to O(1) for the sequence lengths used.

    Returns:
        A scalar in fp32. At ``theta == theta_ref`` (``d = 0``) it is ``(1 + alpha) log 2 / max(alpha, 1)``.
        ``logsigmoid`` keeps loss and gradients finite for ``|beta * d|`` of 1e4 and beyond.
    """
    if isinstance(alpha, bool) or not alpha >= 0:
        raise ValueError(f"`alpha` (weight of the fake term) must be >= 0, got {alpha!r}.")
    if isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"`beta` (scale of the log-ratio) must be > 0, got {beta!r}.")
    d_real = real_policy_logps.float() - real_ref_logps.detach().float()
    d_fake = fake_policy_logps.float() - fake_ref_logps.detach().float()
    real_term = -F.logsigmoid(beta * d_real).mean()
    fake_term = -F.logsigmoid(-beta * d_fake).mean()
    return (real_term + alpha * fake_term) / max(alpha, 1.0)


# --- SequenceMatch (ALGORITHMS.md 3) ---------------------------------------------------------------------------------

_SM_DIVERGENCES = ("chi2", "kl")
_SM_TERMINALS = ("absorbing", "zero")
_KL_MAX_EXPONENT = 30.0  # caps the detached KL weight exp(-r - 1) at ~1e13, so r << 0 cannot overflow it to inf


@dataclass
class SequenceMatchTerms:
    """What [`sequencematch_loss`] returns: the loss with its graph, and detached fp32 scalars for logging.

    ``loss == linear + value + chi2_coef * chi2`` (values). ``linear`` is the data term as it enters the loss (so
    ``-E_data[phi-weighted r]``), ``value`` the value term and ``chi2`` the un-weighted chi^2 term. ``expert_reward``
    and ``rollout_reward`` are the mean of each row's normalised reward ``sum g r / W`` over data and model rows
    (``nan`` when there is no such row); ``expert_value`` is the mean ``V(u_0)`` over data rows, the absolute logit
    level that drifts under this loss (ALGORITHMS.md 3(g)). ``action_logps`` ``(B, T)``, with its graph, is
    ``log pi(a_i | u_i) = Q - V`` (0 on padding), so that a BC term can share the pass (``sequence_nll``).
    """

    loss: torch.Tensor
    linear: torch.Tensor
    value: torch.Tensor
    chi2: torch.Tensor
    expert_reward: torch.Tensor
    rollout_reward: torch.Tensor
    expert_value: torch.Tensor
    action_logps: torch.Tensor | None = None


def _check_sequencematch_args(
    state_logits: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    terminated: torch.Tensor,
    is_data: torch.Tensor,
    gamma: float,
    chi2_coef: float,
    divergence: str,
    terminal: str,
    eos_token_id: int | None,
) -> None:
    """Reject bad shapes and hyperparameters before any arithmetic, naming the argument."""
    if (
        state_logits.dim() != 3
        or actions.dim() != 2
        or state_logits.shape[:2] != (actions.shape[0], actions.shape[1] + 1)
    ):
        raise ValueError(
            f"Expected state_logits (B, T+1, V) and actions (B, T); got {tuple(state_logits.shape)} and "
            f"{tuple(actions.shape)}."
        )
    if action_mask.shape != actions.shape:
        raise ValueError(
            f"`action_mask` must have the shape of `actions` {tuple(actions.shape)}, got {tuple(action_mask.shape)}."
        )
    for name, flags in (("terminated", terminated), ("is_data", is_data)):
        if flags.shape != actions.shape[:1]:
            raise ValueError(f"`{name}` must have shape ({actions.shape[0]},), got {tuple(flags.shape)}.")
    if isinstance(gamma, bool) or not 0.0 < gamma <= 1.0:
        raise ValueError(f"`gamma` (discount) must be in (0, 1], got {gamma!r}.")
    if isinstance(chi2_coef, bool) or not chi2_coef >= 0.0:
        raise ValueError(f"`chi2_coef` (weight of the chi^2 term) must be >= 0, got {chi2_coef!r}.")
    if divergence not in _SM_DIVERGENCES:
        raise ValueError(f"`divergence` must be one of {_SM_DIVERGENCES}, got {divergence!r}.")
    if terminal not in _SM_TERMINALS:
        raise ValueError(f"`terminal` must be one of {_SM_TERMINALS}, got {terminal!r}.")
    if terminal == "absorbing" and eos_token_id is None:
        raise ValueError('`eos_token_id` is required with terminal="absorbing" (the self-loop action).')


def _resolve_horizon(horizon: int | None, n_steps: torch.Tensor, width: int) -> int:
    """The padded length of the absorbing tail: ``width`` (T) by default; it must cover every row's ``T_b``."""
    if horizon is None:
        return width
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
        raise ValueError(f"`horizon` must be a non-negative int, got {horizon!r}.")
    if horizon < width and n_steps.numel() and horizon < int(n_steps.max()):  # a host sync only in this case
        raise ValueError(f"`horizon` ({horizon}) is shorter than a row's {int(n_steps.max())} real steps.")
    return horizon


def _tail_weight(start: torch.Tensor, horizon: int, gamma: float) -> torch.Tensor:
    """``sum_{i=start}^{horizon-1} gamma**i`` in closed form, fp32; ``expm1`` keeps it accurate for gamma near 1."""
    start = start.float()
    if gamma == 1.0:
        return horizon - start
    log_gamma = math.log(gamma)
    return torch.exp(start * log_gamma) * torch.expm1((horizon - start) * log_gamma) / math.expm1(log_gamma)


def _row_means(
    per_step: torch.Tensor, weights: torch.Tensor, tail: torch.Tensor, tail_weight: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """Per row ``(sum_i g_i x_i + tail_weight * x_tail) / W``: ``(B, T)``, ``(B, T)``, ``(B,)``, ``(B,)``, ``(B,)``."""
    tail_sum = torch.where(tail_weight > 0, tail_weight * tail, torch.zeros_like(tail))  # no 0 * inf outside tails
    return ((weights * per_step).sum(-1) + tail_sum) / total


def _masked_mean(values: torch.Tensor, keep: torch.Tensor, empty: float) -> torch.Tensor:
    """Mean of ``values`` over ``keep``; ``empty`` when nothing is kept."""
    count = keep.sum()
    mean = values.masked_fill(~keep, 0.0).sum() / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, empty))


def sequencematch_loss(
    state_logits: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    terminated: torch.Tensor,
    is_data: torch.Tensor,
    *,
    gamma: float,
    chi2_coef: float = 0.5,
    divergence: str = "chi2",
    terminal: str = "absorbing",
    eos_token_id: int | None,
    horizon: int | None = None,
) -> SequenceMatchTerms:
    r"""SequenceMatch loss: inverse soft-Q learning on the logits, over data and model trajectories.

    Cundy & Ermon, "SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling with Backtracking",
    ICLR 2024, arXiv:2306.05426 (ALGORITHMS.md 3(a), 3(b), 3(f)). Per row with ``T_b`` real steps::

        Q_i = logit of a_i at u_i,  V_i = logsumexp(logits at u_i),  Vn_i = V_{i+1},  g_i = gamma**i
        r_i = Q_i - gamma * Vn_i,   dV_i = V_i - gamma * Vn_i
        loss = -mean_data(sum g phi'(r) r / W) + mean_all(sum g dV / W) + chi2_coef * mean_all(sum g r^2 / W)

    ``W`` is the row's total weight ``sum g`` (tail included). ``divergence="chi2"`` uses ``phi'(r) = 1`` (the
    quadratic part of ``phi(x) = x - x^2/4`` is the chi^2-mixture term); ``"kl"`` uses IQ-Learn's detached gradient
    weight ``exp(-r - 1)``. Terminated rows (last action EOS): ``terminal="zero"`` sets the value after EOS to 0;
    ``"absorbing"`` makes ``u_{T_b}`` (the logits at the EOS position) an absorbing state whose self-loop action EOS
    is taken at steps ``T_b .. horizon - 1`` (``r = Q(EOS) - gamma V``, ``dV = (1 - gamma) V``, weights summed in
    closed form), so a constant shift ``c`` of all logits moves every ``r`` by only ``(1 - gamma) c``. Truncated rows
    bootstrap from ``V(u_{T_b})``, with no tail. Noise tokens are part of the transitions (variant A): never steps.

    Args:
        state_logits: ``(B, T+1, V)`` next-token logits at the decision states ``u_0 .. u_T`` (any float dtype;
            fp32 here). Padded states must hold finite values (``states_batch`` points them at a real token).
        actions: ``(B, T)`` the action taken at each state (``<bkspc>`` included); padding is ignored.
        action_mask: ``(B, T)`` true on the ``T_b`` real steps, left-aligned.
        terminated: ``(B,)`` true where the row ended with EOS (a finished sequence), false for a truncated rollout.
        is_data: ``(B,)`` true for (noise-augmented) data rows, false for model rollouts from the replay buffer.
        gamma: discount in ``(0, 1]``. chi2_coef: weight of the chi^2-mixture term, ``>= 0`` (1/4 to 1/2 is the
            natural scale, 3(a)). eos_token_id: the self-loop action of the absorbing state.
        horizon: length the absorbing tail is padded to; defaults to ``T`` and must be ``>= T_b`` for every row.

    Returns:
        [`SequenceMatchTerms`]. Nothing inside the loss is detached except the KL weight. Identity (tested): with
        ``chi2_coef=0`` and data rows only, ``loss`` is the discounted NLL ``mean_b sum_i g_i (-log pi(a_i|u_i)) / W``,
        the absorbing tail adding its ``-log pi(EOS | u_{T_b})`` terms.
    """
    _check_sequencematch_args(
        state_logits, actions, action_mask, terminated, is_data, gamma, chi2_coef, divergence, terminal, eos_token_id
    )
    logits = state_logits.float()
    batch, width = actions.shape
    steps = action_mask.bool()
    n_steps = steps.sum(-1)  # T_b
    horizon = _resolve_horizon(horizon, n_steps, width)
    rows = torch.arange(batch, device=logits.device)

    values = torch.logsumexp(logits, dim=-1)  # (B, T+1) V(u_i)
    # One gather for Q(u_i, a_i) and the absorbing state's Q(u_T, EOS): a single full-size tensor in the backward.
    index = torch.cat([actions.masked_fill(~steps, 0), actions.new_zeros(batch, 1)], 1)  # (B, T+1)
    if terminal == "absorbing":
        is_end = torch.arange(width + 1, device=logits.device) == n_steps.unsqueeze(-1)
        index = index.masked_fill(is_end, eos_token_id)
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # (B, T+1)
    q = picked[:, :-1]  # (B, T); past a row's T_b it holds anything, and is masked below
    done = terminated.bool()
    is_last = steps & (torch.arange(width, device=logits.device) == (n_steps - 1).unsqueeze(-1))
    next_values = values[:, 1:]
    if terminal == "zero":
        next_values = next_values.masked_fill(is_last & done.unsqueeze(-1), 0.0)
    rewards = (q - gamma * next_values).masked_fill(~steps, 0.0)  # padding may hold anything; keep it out
    dvalues = (values[:, :-1] - gamma * next_values).masked_fill(~steps, 0.0)
    discounts = torch.exp(torch.arange(width, device=logits.device, dtype=torch.float32) * math.log(gamma))
    weights = discounts.expand(batch, width).masked_fill(~steps, 0.0)

    tail_weight = torch.zeros(batch, device=logits.device)
    v_abs, tail_rewards = values[rows, n_steps], torch.zeros(batch, device=logits.device)
    if terminal == "absorbing":
        tail_weight = torch.where(done, _tail_weight(n_steps, horizon, gamma), tail_weight)
        tail_rewards = picked[rows, n_steps] - gamma * v_abs
    total = (weights.sum(-1) + tail_weight).clamp(min=torch.finfo(torch.float32).tiny)  # W_b; an empty row gives 0

    phi_grad, tail_phi_grad = torch.ones_like(rewards), torch.ones_like(tail_rewards)
    if divergence == "kl":  # IQ-Learn: d phi(r) = exp(-r - 1) dr, applied as a detached weight on r
        phi_grad = torch.exp((-rewards.detach() - 1.0).clamp(max=_KL_MAX_EXPONENT))
        tail_phi_grad = torch.exp((-tail_rewards.detach() - 1.0).clamp(max=_KL_MAX_EXPONENT))
    data = is_data.bool()
    linear_rows = _row_means(phi_grad * rewards, weights, tail_phi_grad * tail_rewards, tail_weight, total)
    value_rows = _row_means(dvalues, weights, (1.0 - gamma) * v_abs, tail_weight, total)
    chi2_rows = _row_means(rewards.square(), weights, tail_rewards.square(), tail_weight, total)
    linear = -_masked_mean(linear_rows, data, empty=0.0)
    value, chi2 = value_rows.mean(), chi2_rows.mean()

    reward_rows = _row_means(rewards, weights, tail_rewards, tail_weight, total).detach()
    return SequenceMatchTerms(
        loss=linear + value + chi2_coef * chi2,
        linear=linear.detach(),
        value=value.detach(),
        chi2=chi2.detach(),
        expert_reward=_masked_mean(reward_rows, data, empty=math.nan),
        rollout_reward=_masked_mean(reward_rows, ~data, empty=math.nan),
        expert_value=_masked_mean(values[:, 0].detach(), data, empty=math.nan),
        action_logps=(q - values[:, :-1]).masked_fill(~steps, 0.0),
    )


def action_nll(
    state_logits: torch.Tensor,
    actions: torch.Tensor,
    action_mask: torch.Tensor,
    num_tokens: torch.Tensor | int | None = None,
    reduction: str = "token",
) -> torch.Tensor:
    r"""BC loss: the NLL ``-log pi(a_i | u_i)`` of the real action steps (``<bkspc>`` targets included; noise never).

    Args:
        state_logits: ``(B, T+1, V)`` logits at the decision states (the last state is not used here).
        actions: ``(B, T)``. action_mask: ``(B, T)``, true on real steps.
        num_tokens: divisor of the ``"token"`` reduction; ``None`` is ``action_mask.sum()``. Trainers may pass a
            global count.
        reduction: ``"token"``, the mean over every real step of the batch (SFT's normalisation); ``"sequence"``, the
            mean over rows of each row's per-step mean, which weighs trajectories alike, as ``sequencematch_loss``
            does, so that gradient accumulation and several processes match one big batch of equal-size shares.

    Returns:
        A scalar in fp32; an all-padding batch gives 0.
    """
    if state_logits.dim() != 3 or state_logits.shape[:2] != (actions.shape[0], actions.shape[1] + 1):
        raise ValueError(
            f"Expected state_logits (B, T+1, V) and actions (B, T); got {tuple(state_logits.shape)} and "
            f"{tuple(actions.shape)}."
        )
    if reduction not in ("token", "sequence"):
        raise ValueError(f"`reduction` must be 'token' or 'sequence', got {reduction!r}.")
    keep = action_mask.bool()
    logprobs = torch.log_softmax(state_logits[:, :-1].float(), dim=-1)
    logps = logprobs.gather(-1, actions.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1).masked_fill(~keep, 0.0)
    if reduction == "sequence":
        return sequence_nll(logps, keep)
    denom = keep.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=logps.device)
    return -logps.sum() / denom.clamp(min=1)


def sequence_nll(logps: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """The mean over rows of each row's mean NLL (``action_nll``'s ``"sequence"`` reduction), from ``(B, T)`` action
    log-probabilities (0 on padding), e.g. ``SequenceMatchTerms.action_logps``; rows without a step are left out."""
    keep = action_mask.bool()
    rows = keep.any(-1)
    per_row = -logps.masked_fill(~keep, 0.0).sum(-1) / keep.sum(-1).clamp(min=1)
    return per_row.masked_fill(~rows, 0.0).sum() / rows.sum().clamp(min=1)  # no boolean index: no host sync
