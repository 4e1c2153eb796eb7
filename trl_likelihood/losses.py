"""Every training objective of trl-likelihood as a pure function on tensors: no model, no trainer.

Trainers gather log-probabilities and masks and call these; tests check each against a hand computation first.
All arithmetic is done in fp32, whatever the input dtype. Maths and sources: ALGORITHMS.md (section per method).
"""

from __future__ import annotations

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
