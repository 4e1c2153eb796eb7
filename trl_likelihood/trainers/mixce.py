"""MixCE: mix the forward cross-entropy (MLE) with a self-reinforced reverse cross-entropy.
Paper: Zhang et al., "MixCE: Training Autoregressive Language Models by Mixing Forward and Reverse Cross-Entropies",
ACL 2023, arXiv:2305.16958. Code: bloomberg/MixCE-acl2023. Maths: ALGORITHMS.md section 2.

    L(theta) = eta * CE(P, Q) + (1 - eta) * CE(Q, P)
    loss_t   = -[eta + (1 - eta) * sg(q_t)] * log q_t,     q_t = Q(x_t | x_<t) of the gold token

Choices made here:
- The reverse term is the paper's self-reinforced surrogate, applied per token with ``q_t`` detached, because the
  sequence probability underflows [code: gpt2.py, synthetic.py].
- Token mean over the trained tokens (completion-only / assistant-only masks from SFT apply), normalised by the global
  token count exactly as ``SFTTrainer`` normalises its NLL, so gradient accumulation and several processes match
  one big batch [ours].
- Per-token log-probs come from TRL's fused LM head: the ``(B, T, V)`` logits are never built [ours].
- ``mixce/forward_nll`` (plain token-mean NLL) is logged in training and evaluation, with ``mixce/perplexity`` in
  evaluation, because the MixCE loss itself is not comparable across eta (pitfall 6) [code: baseline eval].
Tests check the identities: eta = 1 is exactly the NLL and trains exactly like ``SFTTrainer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from .. import _compat
from ..data import checked_sft_datasets
from ..losses import mixce_token_loss
from ..methods import METHODS
from .base import MethodTrainer
from .config_checks import check_config_fields, check_sft_loss_fields, resolve_args

MIXCE_CITATION = """\
@inproceedings{zhang2023mixce,
    title     = {{MixCE: Training Autoregressive Language Models by Mixing Forward and Reverse Cross-Entropies}},
    author    = {Shiyue Zhang and Shijie Wu and Ozan Irsoy and Steven Lu and Mohit Bansal and Mark Dredze and
                 David Rosenberg},
    booktitle = {Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics},
    year      = 2023,
    url       = {https://arxiv.org/abs/2305.16958}
}"""


@dataclass
class MixCEConfig(SFTConfig):
    r"""[`~trl.SFTConfig`] plus MixCE's mixing ratio.

    Parameters:
        eta (`float`, *optional*, defaults to `0.5`):
            Weight of the forward (MLE) term; `1.0` is SFT, `0.0` is DFT. The paper selects eta per dataset by dev
            MAUVE from {0, .01, .1, .3, .5, .7, .9, .99, 1}; its released GPT-2 large models use 0.1 (WikiText), 0.3
            (WebText) and 0.7 (WritingPrompts). 0.5 sits in the middle of that range and is where held-out JS is
            flattest in our synthetic calibration (ALGORITHMS.md 2(g)); tune it on your data.
    """

    eta: float = field(
        default=0.5,
        metadata={"help": "Weight of the forward (MLE) term in [0, 1]: 1.0 is plain SFT, 0.0 is DFT (reverse only)."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(
            self, numbers=(("eta", lambda v: 0 <= v <= 1, "a number in [0, 1] (weight of the forward CE)"),)
        )
        check_sft_loss_fields(self, "MixCE")
        if self.label_smoothing_factor:
            raise ValueError("`label_smoothing_factor` is not supported by MixCE; set it to 0.")


class MixCETrainer(MethodTrainer, SFTTrainer):
    """[`~trl.SFTTrainer`] trained with MixCE. Data, collator, PEFT, packing, logging and checkpoints are SFT's."""

    _name = "MixCE"
    _metric_prefix = "mixce"
    _tag_names = ["trl", "trl-likelihood", "mixce"]
    _paper = {"title": "MixCE", "id": "2305.16958", "citation": MIXCE_CITATION}
    _card_template = METHODS["mixce"].card_template

    def __init__(self, model: Any, args: MixCEConfig | None = None, train_dataset=None, eval_dataset=None, **kwargs):
        args = resolve_args("MixCETrainer", model, args, MixCEConfig, kwargs)
        train_dataset, eval_dataset = checked_sft_datasets(
            train_dataset, eval_dataset, args, kwargs.get("processing_class")
        )
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self.metric_mode
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)  # log_probs (B, T-1) fp32, zero where labels are -100
        mask = outputs.label_mask
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = mixce_token_loss(outputs.log_probs, mask, eta=self.args.eta, num_tokens=num_tokens)
        # Like SFTTrainer: `num_items_in_batch` counts every rank's tokens and DDP averages gradients across ranks.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        # Exact corpus-level NLL from per-row token sums and counts (see `window_metrics`).
        self.record_rows(mode, torch.stack([-outputs.log_probs.detach().float().sum(-1), mask.sum(-1).float()], 1))
        _compat.record_sft_metrics(self, inputs, outputs, mode)
        if return_outputs:
            with torch.no_grad():
                logits_inputs = {k: v for k, v in inputs.items() if k != "labels"}
                outputs = model(**logits_inputs)
        return (loss, outputs) if return_outputs else loss

    def window_metrics(self, mode, rows, means, totals):
        """The exact corpus-level NLL of the window (token sums over token counts); its perplexity in evaluation."""
        nll_sum, count = rows.double().sum(0).tolist() if rows is not None else (0.0, 0.0)
        if count == 0:
            return means
        metrics = {**means, "forward_nll": nll_sum / count}
        if mode == "eval":
            metrics["perplexity"] = math.exp(min(metrics["forward_nll"], 700.0))
        return metrics

    def card_hyperparameters(self) -> dict[str, Any]:
        return {"eta": self.args.eta}
