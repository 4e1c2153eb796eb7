"""Every training objective of trl-likelihood as a pure function on tensors: no model, no trainer.

Trainers gather log-probabilities and masks and call these; tests check each against a hand computation first.
All arithmetic is done in fp32, whatever the input dtype. Maths and sources: ALGORITHMS.md (section per method).
"""

from __future__ import annotations

import torch

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
