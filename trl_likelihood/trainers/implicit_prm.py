"""Implicit PRM: an outcome reward parameterised as ``beta * log pi/pi_ref`` yields process (step) rewards for free.
Paper: Yuan et al., "Free Process Rewards without Process Labels", 2024, arXiv:2412.01981. Code: PRIME-RL/ImplicitPRM.
Maths: ALGORITHMS.md section 4.

    r(y)  = beta * sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]      (response tokens only)
    ce:   loss = -[l log s(r(y)) + (1 - l) log s(-r(y))]                       (unpaired, label l in {0, 1})
    dpo:  loss = -log s(r(y_w) - r(y_l))                                         (correct x incorrect, same prompt)

Choices made here:
- Sums over response tokens, no length normalisation [code: ``_get_batch_logps``]. The response is the completion
  followed by EOS, tokenised by SFT's prompt-completion pipeline; prompt tokens are never scored [ours, tested].
- ``logsigmoid`` instead of the official ``BCELoss(sigmoid(z))``, which clamps at -100 [code; pitfall in 4(f)].
- The reference is the base model with the adapter disabled under PEFT (one model in memory), an explicit
  ``ref_model``, a frozen copy of the initial policy, or log-probs precomputed once (``precompute_ref_log_probs``).
- ``dpo`` from unpaired data pairs every correct with every incorrect response of a prompt [code: ``train_dpo.py``].
- Per-step rewards at inference come from the partial sums of the same ratio: see ``trl_likelihood.scoring``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from .. import _compat
from ..cards import CardInfo
from ..losses import implicit_prm_dpo_loss, implicit_prm_loss
from ..methods import METHODS
from ..metrics import binary_auroc
from ..modeling import eval_mode
from ..prm_data import LABEL_COLUMN, prepare_prm_dataset
from ..ratio import Reference, build_reference, token_logps
from .base import MethodTrainer
from .config_checks import check_config_fields, resolve_args
from .guards import LossOnlyEvaluation

IMPLICIT_PRM_CITATION = """\
@article{yuan2024implicitprm,
    title   = {{Free Process Rewards without Process Labels}},
    author  = {Lifan Yuan and Wendi Li and Huayu Chen and Ganqu Cui and Ning Ding and Kaiyan Zhang and Bowen Zhou and
               Zhiyuan Liu and Hao Peng},
    journal = {arXiv preprint arXiv:2412.01981},
    year    = 2024
}"""

_EXTRA_COLUMNS = [LABEL_COLUMN, "rejected_input_ids", "rejected_labels", "ref_logps"]
# A pair's row through its two tokenisation passes (chosen, then rejected), and back to the trainer's names.
_TO_REJECTED_PASS = {
    "input_ids": "chosen_input_ids",
    "labels": "chosen_labels",
    "completion": "chosen",
    "rejected": "completion",
}
_PAIR_COLUMNS = {
    "chosen_input_ids": "input_ids",
    "chosen_labels": "labels",
    "chosen": "completion",
    "input_ids": "rejected_input_ids",
    "labels": "rejected_labels",
    "completion": "rejected",
}


@dataclass
class ImplicitPRMConfig(SFTConfig):
    r"""[`~trl.SFTConfig`] plus the implicit PRM's fields. Data preparation (tokenisation, truncation) is SFT's.

    Parameters:
        beta (`float`, *optional*, defaults to `0.05`): scale of the implicit reward ``beta * log pi/pi_ref``; the
            paper's value for 8B models. Small models on small data learn faster with larger beta (ALGORITHMS.md 4(g)).
        loss_type (`str`, *optional*, defaults to `"ce"`): `"ce"` (unpaired labels) or `"dpo"` (pairs).
        disable_dropout (`bool`, *optional*, defaults to `True`): switch dropout off in the policy (LoRA dropout
            included), as ``DPOTrainer`` does, so the log-ratio to the dropout-free reference is not noisy.
        precompute_ref_log_probs (`bool`, *optional*, defaults to `False`): compute the reference log-probs of the
            datasets once before training, so no reference forward runs during training.
        precompute_ref_batch_size (`int`, *optional*): batch size of that pass; defaults to the eval batch size.
        stepwise (`bool`, *optional*): how to read ``prompt, completions, labels`` data, whose columns two formats
            share: `True` for TRL's stepwise supervision (the steps of one response, a label per step; trained as
            one response, correct when every step is), `False` for a group of responses with an outcome label each.
            Unset, such data is refused with the two readings named.
        step_separator (`str`, *optional*, defaults to `"\n\n"`): joins the steps of stepwise data into the response,
            as ``ImplicitPRM.score`` joins them (its default too).
    """

    beta: float = field(default=0.05, metadata={"help": "Scale of the implicit reward beta * log(pi / pi_ref)."})
    loss_type: str = field(
        default="ce",
        metadata={
            "help": "'ce': unpaired outcome labels; 'dpo': correct x incorrect pairs.",
            "choices": ["ce", "dpo"],
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Switch dropout off in the policy, as DPOTrainer does: the log-ratio must not be noisy."},
    )
    precompute_ref_log_probs: bool = field(
        default=False, metadata={"help": "Compute the reference log-probs of the datasets once, before training."}
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the precompute pass (default: per_device_eval_batch_size)."}
    )
    stepwise: bool | None = field(
        default=None,
        metadata={
            "help": "Data with 'completions' and 'labels': True for TRL's stepwise supervision (the steps of one "
            "response), False for a group of responses with an outcome label each."
        },
    )
    step_separator: str = field(
        default="\n\n", metadata={"help": "Joins the steps of stepwise data, as ImplicitPRM.score does."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(self, numbers=(("beta", lambda v: v > 0, "a positive number"),))
        if self.loss_type not in ("ce", "dpo"):
            raise ValueError(f"`loss_type` must be 'ce' or 'dpo', got {self.loss_type!r}.")
        if self.packing:
            raise ValueError("`packing=True` would merge responses whose rewards must stay separate; set it to False.")
        if self.padding_free:
            raise ValueError("`padding_free=True` is not supported: each response is scored as its own row.")
        if self.completion_only_loss is False:
            raise ValueError(
                "`completion_only_loss=False` would score the prompt tokens too; the reward (and `ImplicitPRM.score`) "
                "sums over the response only. Leave it unset."
            )


class PRMCollator:
    """SFT's collator on the responses of the examples, in the one layout that the loss, the metrics and the
    precomputed reference keep: side-major, ``(sides, examples)`` flattened. Unpaired, a row per example; paired, the
    chosen responses of the examples, then their rejected responses in the same order. Labels and stored reference
    log-probs (``ref_logps``, a list per example, one per side) are laid out the same way."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        paired = "rejected_input_ids" in examples[0]
        sides = [("input_ids", "labels")] + ([("rejected_input_ids", "rejected_labels")] if paired else [])
        batch = self.base([{"input_ids": e[ids], "labels": e[lab]} for ids, lab in sides for e in examples])
        labels = [1] * len(examples) + [0] * len(examples) if paired else [e[LABEL_COLUMN] for e in examples]
        batch[LABEL_COLUMN] = torch.tensor(labels, dtype=torch.long)
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([e["ref_logps"] for e in examples], dtype=torch.float32).T.flatten()
        return batch


class ImplicitPRMTrainer(MethodTrainer, LossOnlyEvaluation, SFTTrainer):
    """Trains an implicit PRM on outcome labels. Replaces ``KTOTrainer`` (unpaired) or ``DPOTrainer`` (pairs)."""

    _name = "Implicit PRM"
    _metric_prefix = "prm"
    _tag_names = ["trl", "trl-likelihood", "implicit-prm", "process-reward-model"]
    _paper = {
        "title": "Free Process Rewards without Process Labels",
        "id": "2412.01981",
        "citation": IMPLICIT_PRM_CITATION,
    }
    _card_template = METHODS["implicit-prm"].card_template
    _card_pipeline_tag = None  # a scorer, not a generator
    loss_is_scaled_for_ga = False  # a per-sequence mean, like DPO: the Trainer divides by the accumulation steps

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: ImplicitPRMConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        **kwargs: Any,
    ):
        args = resolve_args("ImplicitPRMTrainer", model, args, ImplicitPRMConfig, kwargs)
        train_dataset = prepare_prm_dataset(train_dataset, args, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: prepare_prm_dataset(v, args, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
        else:
            eval_dataset = prepare_prm_dataset(eval_dataset, args, "eval_dataset")
        with _compat.sft_init_accepting_loss_type(args):
            super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        self.data_collator = PRMCollator(self.data_collator)
        if args.disable_dropout:
            _compat.disable_dropout_in_model(self.model)
        self.reference = build_reference(self, ref_model)
        if args.precompute_ref_log_probs:
            self._precompute_reference_logps()

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def _precompute_reference_logps(self) -> None:
        """Store reference log-prob sums as dataset columns, then drop the reference model from memory.

        This runs before ``Trainer`` prepares the policy: under DeepSpeed the adapter-disabled policy is wrapped in an
        inference engine for the pass, as ``DPOTrainer`` does (under ZeRO-3 its weights are partitioned already)."""
        size = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        policy = self.model
        if self.reference.kind == "adapter" and self.is_deepspeed_enabled:
            policy = _compat.prepare_deepspeed(self.model, self.accelerator)
        self.train_dataset = self._with_ref_logps(policy, self.train_dataset, size)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._with_ref_logps(policy, v, size) for k, v in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self._with_ref_logps(policy, self.eval_dataset, size)
        self.reference = Reference(self.model, precomputed=True)
        self._reference_source = f"precomputed-{self._reference_source}"

    def _with_ref_logps(self, policy: torch.nn.Module, dataset: Dataset, batch_size: int) -> Dataset:
        """The dataset with its reference log-prob column, a list per example (one per side). Each process scores
        every ``num_processes``-th example (the same number of batches on each, padded with a repeated example, so
        sharded engines stay in step) and the examples are gathered back in order."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, len(dataset), world))
        mine += mine[-1:] * (math.ceil(len(dataset) / world) - len(mine))
        scored = []
        with eval_mode(self.model):
            for start in range(0, len(mine), batch_size):
                index = mine[start : start + batch_size]
                batch = self._prepare_inputs(self.data_collator([dataset[i] for i in index]))
                logps = self.reference.sequence_logps(policy, batch).view(-1, len(index))  # (sides, examples)
                scored += zip(index, logps.T.cpu().tolist())
        by_example = dict(gather_object(scored))
        return dataset.add_column("ref_logps", [by_example[i] for i in range(len(dataset))])

    # ------------------------------------------------------------------ data
    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """SFT's preparation. A pair stays one row: SFT's pipeline tokenises its chosen side (``completion``), then
        its rejected side on the same rows, and a side truncated to nothing drops the pair."""
        if "rejected" not in (dataset.column_names or []):
            return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        pairs = _compat.prepare_sft_dataset(self, dataset, processing_class, args, f"{dataset_name} chosen")
        pairs = _compat.prepare_sft_dataset(  # no second shuffle: the rows keep the chosen pass's order
            self, pairs.rename_columns(_TO_REJECTED_PASS), processing_class, args, f"{dataset_name} rejected", False
        )
        if len(pairs) == 0:
            raise ValueError(
                f"{dataset_name}: no pair has scorable tokens on both sides after truncation to max_length."
            )
        return pairs.rename_columns(_PAIR_COLUMNS)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *_EXTRA_COLUMNS]))

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self.metric_mode
        labels = inputs.pop(LABEL_COLUMN)
        policy = token_logps(model, inputs).sequence()  # (sides * examples,), the collator's side-major layout
        ref = self.reference.sequence_logps(model, inputs)
        beta, sides = self.args.beta, 1 if self.args.loss_type == "ce" else 2
        if sides == 1:
            loss = implicit_prm_loss(policy, ref, labels, beta)
        else:
            (chosen, rejected), (ref_chosen, ref_rejected) = policy.view(2, -1), ref.view(2, -1)
            loss = implicit_prm_dpo_loss(chosen, ref_chosen, rejected, ref_rejected, beta)
        rewards = torch.stack([beta * (policy.detach() - ref), labels.to(policy)], 1)  # (sides * examples, 2)
        # Indexed by example for `gather_for_metrics`, which trims the padded last batch by examples: a pair is one.
        per_example = rewards.view(sides, -1, 2).transpose(0, 1)  # (examples, sides, 2), a view
        self.record_rows(mode, per_example)  # kept as (sides * examples, 2), a pair's two rows adjacent
        return (loss, None) if return_outputs else loss

    def window_metrics(self, mode, rows, means, totals):
        """``reward_metrics`` over the window's responses."""
        if rows is None:
            return means
        rewards, labels = rows.float().unbind(1)
        return {**means, **reward_metrics(rewards, labels.bool(), self.args.loss_type)}

    def card_hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.args.beta, "loss_type": self.args.loss_type, "step_separator": self.args.step_separator}

    def card_extra(self, info: CardInfo) -> dict[str, Any]:
        reference_is_base = info.is_adapter and self._reference_source in ("adapter", "precomputed-adapter")
        return {"reference_is_base": reference_is_base, "reference": self._reference_name or info.base_model}


def reward_metrics(rewards: torch.Tensor, labels: torch.Tensor, loss_type: str) -> dict[str, float]:
    """Outcome accuracy, mean reward of correct and incorrect responses, and AUROC, over the logged window.

    ``ce`` accuracy is the sign of the reward against the label; ``dpo`` accuracy is the share of pairs ranked right
    (a pair's rows are adjacent, chosen then rejected, so the i-th correct and i-th incorrect row are one pair).
    """
    pos, neg = rewards[labels], rewards[~labels]
    metrics = {"auroc": binary_auroc(rewards, labels)}
    if loss_type == "ce":
        metrics["accuracy"] = ((rewards > 0) == labels).float().mean().item()
    else:
        metrics["accuracy"] = (pos > neg).float().mean().item() if len(pos) == len(neg) else float("nan")
        metrics["margin"] = (pos - neg).mean().item() if len(pos) == len(neg) else float("nan")
    if len(pos):
        metrics["reward_correct"] = pos.mean().item()
    if len(neg):
        metrics["reward_incorrect"] = neg.mean().item()
    return metrics
