"""DDO: the policy/reference likelihood ratio is a GAN discriminator, trained on real data vs reference samples.
Paper: Zheng et al., "Direct Discriminative Optimization: Your Likelihood-Based Visual Generative Model is Secretly a
GAN Discriminator", ICML 2025, arXiv:2503.01103. Code: NVlabs/DDO (VAR trainer). Maths: ALGORITHMS.md section 5.

    delta(x) = sum_t log p_theta(x_t | x_<t) - log p_ref(x_t | x_<t)          (completion tokens only)
    loss     = -[mean_real logsigmoid(beta delta) + alpha mean_fake logsigmoid(-beta delta)] / max(alpha, 1)

Choices made here:
- Real rows are SFT's batches (language modelling, prompt-completion or conversational data, tokenised by SFT). The
  prompt of a row is everything before its first scored token (``modeling.prompt_end``): the first token for plain
  text (BOS where the tokenizer adds one), the prompt for prompt-completion data. Fakes are reference samples for
  the same prompts, one per real row, so real and fake deltas condition on the same tokens [code: same class labels
  as the real batch].
- Fakes are fresh every step by default (``fake_pool="online"``), plain sampling (temperature 1, no top-k/top-p)
  [code]. Their length is capped by ``max_new_tokens``, by default the longest real completion of the batch, so fakes
  cannot be longer than the data they are compared with (DDO learns "long = fake" otherwise, ALGORITHMS.md 5(f)).
- delta is a sum, as in the paper; ``length_normalize=True`` is a per-token mean for variable-length text, an
  ablation that the paper does not have [ours].
- Real and fake rows go through one policy forward, padded to a common length; the reference scores the same batch
  under no grad. Log-probs come from TRL's fused head in fp32 (``ratio.token_logps``).
- Sampling is seeded by (seed, global step, rank, micro-batch) with a private generator (``generation.py``): runs are
  reproducible, and the training RNG (dropout, data order) is the same as without sampling.
- Self-play rounds: at the end of a round the reference becomes the current model. Under PEFT it is the base with the
  adapter disabled in round 1, then the same model with the adapter swapped for a snapshot taken at the round start
  (adapter-sized). The base is never modified, so the saved adapter is the whole result and 4-bit bases work; the
  adapter and Adam's state carry on across rounds [ours]. Full fine-tuning copies the policy into the reference
  model (an explicit ``ref_model`` is overwritten in place). Checkpoints keep the round's reference: resuming
  mid-round is exact (tested).
- The paired accuracy P[delta_real > delta_fake] is logged, never optimised: DDO is unpaired [code].
Tests check the identity: at theta = theta_ref (step 1, and the first step of every round) the loss is
(1 + alpha) log 2 / max(alpha, 1) and the log-ratios are 0.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.logging import get_logger
from trl import SFTConfig, SFTTrainer

from .. import _compat, engines
from ..cards import CardInfo
from ..data import checked_sft_datasets
from ..generation import append_completions, sample_completions, sampling_seed
from ..losses import IGNORE_INDEX, ddo_loss
from ..methods import METHODS
from ..modeling import prompt_end, stop_and_pad_ids, unwrap_ddp
from ..ratio import adapter_disabled, build_reference, token_logps, trainable_snapshot, weights_swapped
from .base import (
    CardMixin,
    LossOnlyEvaluation,
    MicroBatchIndex,
    check_config_fields,
    check_sft_loss_fields,
    resolve_args,
)
from .checkpoints import CheckpointedMethodState

logger = get_logger(__name__)
ROUND_STATE = "ddo_round.pt"  # in every checkpoint: the round index and its reference's weights (None in round 1)
POOL_STATE = "ddo_pool_rank{rank}.pt"  # with fake_pool="round": this process's fakes of the current round

DDO_CITATION = """\
@inproceedings{zheng2025ddo,
    title     = {{Direct Discriminative Optimization: Your Likelihood-Based Visual Generative Model is Secretly a GAN
                 Discriminator}},
    author    = {Kaiwen Zheng and Yongxin Chen and Huayu Chen and Guande He and Ming-Yu Liu and Jun Zhu and
                 Qinsheng Zhang},
    booktitle = {International Conference on Machine Learning},
    year      = 2025,
    url       = {https://arxiv.org/abs/2503.01103}
}"""


@dataclass
class DDOConfig(SFTConfig):
    r"""[`~trl.SFTConfig`] plus DDO's fields. Data preparation (tokenisation, truncation, masks) is SFT's.

    Parameters:
        disable_dropout (`bool`, *optional*, defaults to `True`): switch dropout off in the policy, as
            ``DPOTrainer`` does, so the log-ratio to the reference is not noisy.
        alpha (`float`, *optional*, defaults to `1.0`): weight of the fake term; the loss is divided by
            `max(alpha, 1)`. Larger alpha trades closeness (JS) for precision (ALGORITHMS.md 5(g)).
        beta (`float`, *optional*, defaults to `0.1`): scale of the summed log-ratio; it must bring
            `beta * delta` to O(1) for your sequence lengths. The official defaults are not published; sweep
            beta in {0.01, 0.02, 0.05, 0.1} and alpha in {0.5, 1, 2, 4} (ALGORITHMS.md 5(c)). Small beta is a
            trade-off: as beta -> 0 the loss tends to (beta/2) [NLL - KL(p_ref || p_theta)], which pushes hardest
            away from a broad reference but is flat where the reference already fits the data, so Adam random-walks
            there; the beta^2 term is the restoring force. In the lab (16 tokens, alpha 1, from an MLE-optimal
            reference at lr 1e-4) beta 0.5 worsened JS by 20 % in 150 steps, while beta 2 stayed within 3 % of
            continued MLE over 3 rounds; from an over-dispersed reference beta 0.5 sharpened more
            (``benchmarks/efficacy_ddo.py``). When the reference may already be good, prefer the larger beta and a
            fine-tuning learning rate.
        num_rounds (`int`, *optional*, defaults to `1`): self-play rounds; each new round makes the current model
            the reference. The paper's VAR runs stop at 2.
        round_steps (`int`, *optional*): optimizer steps per round; by default the training steps split evenly
            over the rounds (so `num_train_epochs=num_rounds` gives one epoch per round). Steps past the last round
            stay in the last round.
        fake_pool (`str`, *optional*, defaults to `"online"`): `"online"` samples fresh fakes every step (the
            paper); `"round"` samples one fake per real row once per round and reuses it when the row comes back in
            a later epoch of the same round. Both are exact reference samples (the reference is frozen within a
            round); `"round"` saves sampling time with several epochs per round, at the price of fewer distinct
            fakes, which the policy can then memorise.
        length_normalize (`bool`, *optional*, defaults to `False`): divide delta by the number of scored tokens
            (an ablation for variable-length text; the paper sums).
        max_new_tokens (`int`, *optional*): most tokens per fake; by default the longest real completion of the
            batch. Never more than `max_length` minus the prompt.
        temperature (`float`, *optional*, defaults to `1.0`), top_k (`int`, defaults to `0`), top_p (`float`,
            defaults to `1.0`): sampling of the fakes; anything but the defaults departs from DDO's theory.
    """

    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Switch dropout off in the policy, as DPOTrainer does: the log-ratio must not be noisy."},
    )
    alpha: float = field(default=1.0, metadata={"help": "Weight of the fake term; the loss is / max(alpha, 1)."})
    beta: float = field(
        default=0.1,
        metadata={
            "help": "Scale of the log-ratio: beta * delta should be O(1); too small drifts off a good reference."
        },
    )
    num_rounds: int = field(default=1, metadata={"help": "Self-play rounds; each new round makes the model the ref."})
    round_steps: int | None = field(default=None, metadata={"help": "Steps per round (default: steps / num_rounds)."})
    fake_pool: str = field(
        default="online",
        metadata={
            "help": "'online': fresh fakes every step; 'round': one fake per row per round.",
            "choices": ["online", "round"],
        },
    )
    length_normalize: bool = field(default=False, metadata={"help": "Per-token mean log-ratio instead of the sum."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Most tokens per fake (default: real max)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the fakes."})
    top_k: int = field(default=0, metadata={"help": "Top-k of the fakes' sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Top-p of the fakes' sampling (1.0: off)."})

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(
            self,
            numbers=(
                ("alpha", lambda v: v >= 0, "a number >= 0"),
                ("beta", lambda v: v > 0, "a positive number"),
                ("temperature", lambda v: v > 0, "a positive number"),
                ("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]"),
            ),
            integers=(("num_rounds", 1), ("round_steps", 1), ("max_new_tokens", 1), ("top_k", 0)),
            choices=(("fake_pool", ("online", "round")),),
        )
        check_sft_loss_fields(self, "DDO", whole_sequences="scores whole sequences")


def length_mismatch_advice(
    fake: float, real: float, max_new_tokens: int | None, length_normalize: bool = False
) -> str | None:
    """What to change when the fakes' mean length is off the real rows' by more than 3/2 either way (DDO may then
    learn length instead of content), fitted to the cause; ``None`` when the lengths are close, or when per-token
    log-ratios already take length out and no setting of ours shortens the fakes."""
    if 2 / 3 <= fake / max(real, 1e-9) <= 3 / 2:
        return None
    said = f"Fake mean length {fake:.1f} vs real {real:.1f}: DDO may learn length instead of content. "
    if fake < real and max_new_tokens is not None and max_new_tokens < real:
        return said + (
            f"`max_new_tokens`={max_new_tokens} cuts the fakes short: raise it, or leave it unset (each batch's "
            "longest real completion)."
        )
    if length_normalize:
        return None
    if fake < real:
        return said + "The reference ends its samples early: `length_normalize=True` compares per-token log-ratios."
    return said + (
        "The reference runs on where the data stops: `length_normalize=True` compares per-token log-ratios"
        + (f", or lower `max_new_tokens`={max_new_tokens}." if max_new_tokens is not None else ".")
    )


class DDOTrainer(CheckpointedMethodState, CardMixin, LossOnlyEvaluation, SFTTrainer):
    """[`~trl.SFTTrainer`] on the same data, trained with DDO against reference samples; self-play rounds."""

    _name = "DDO"
    _tag_names = ["trl", "trl-likelihood", "ddo"]
    _paper = {"title": "Direct Discriminative Optimization", "id": "2503.01103", "citation": DDO_CITATION}
    _card_template = METHODS["ddo"].card_template
    loss_is_scaled_for_ga = False  # two per-sequence means, like DPO: the Trainer divides by the accumulation steps

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: DDOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        **kwargs,
    ):
        args = resolve_args("DDOTrainer", model, args, DDOConfig, kwargs)
        train_dataset, eval_dataset = checked_sft_datasets(
            train_dataset, eval_dataset, args, kwargs.get("processing_class")
        )
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        if args.disable_dropout:
            _compat.disable_dropout_in_model(self.model)
        # The same three reference sources as the implicit PRM: adapter disabled, explicit model, frozen copy.
        self.reference = build_reference(self, ref_model)
        if self.reference.kind == "model" and _compat.is_peft(self.model) and args.num_rounds > 1:
            raise ValueError(
                "`num_rounds` > 1 with a PEFT model and an explicit `ref_model` is not supported: the policy's "
                "weights cannot be loaded into the reference. Leave `ref_model=None` (the reference is the base)."
            )
        self._round = 0
        self._rounds_checked = False
        self._length_warned = False
        self._ref_snapshot: dict[str, torch.Tensor] | None = None  # PEFT, rounds >= 2: the reference's weights
        self._pool: dict[tuple[int, ...], list[int]] = {}
        self._micro_index = MicroBatchIndex()
        self._rows = {"train": [], "eval": []}
        self._times = {"sampling": 0.0, "step": 0.0}
        self._eos, self._pad = stop_and_pad_ids(self.model, self.processing_class)

    # ------------------------------------------------------------------ rounds
    def round_length(self) -> int:
        """Optimizer steps per round."""
        return self.args.round_steps or max(1, math.ceil(self.state.max_steps / self.args.num_rounds))

    def _round_at(self, step: int) -> int:
        return min(step // self.round_length(), self.args.num_rounds - 1)

    def _warn_if_rounds_do_not_fit(self) -> None:
        """Say so when the steps cannot hold every round asked for (``num_rounds`` above ``max_steps``, or a
        ``round_steps`` too long): the later rounds would never start, silently."""
        runs = self._round_at(self.state.max_steps - 1) + 1
        if runs < self.args.num_rounds:
            logger.warning(
                "`num_rounds`=%d but %d training steps of %d per round run only %d round(s). Raise `max_steps` (or "
                "`num_train_epochs`), lower `round_steps`, or lower `num_rounds`.",
                self.args.num_rounds,
                self.state.max_steps,
                self.round_length(),
                runs,
            )

    # ------------------------------------------------------------------ checkpoints
    def load_method_state(self, folder: str) -> None:
        """The round and its reference, and this process's pool of fakes, as ``save_method_state`` wrote them."""
        file = os.path.join(folder, ROUND_STATE)
        if not os.path.isfile(file):
            logger.warning(
                "%s has no %s: the round and its reference start over (round 1, reference = the initial model).",
                folder,
                ROUND_STATE,
            )
        else:
            # Loaded on the CPU: a checkpoint written by CPU processes tags its tensors "cpu:0", which torch cannot map
            state = torch.load(file, map_location="cpu", weights_only=True)
            if state["round"] > 0 and self.reference.kind == "model":  # full tensors; each process keeps its shard
                engines.load_full_state(unwrap_ddp(self.reference.ref_model), state["reference"])
            elif state["round"] > 0:
                self._ref_snapshot = {n: w.to(self.accelerator.device) for n, w in state["reference"].items()}
            self._round = state["round"]
        pool = os.path.join(folder, POOL_STATE.format(rank=self.accelerator.process_index))
        if os.path.isfile(pool):
            self._pool = {tuple(key): fake for key, fake in torch.load(pool, weights_only=True)}
        elif self.args.fake_pool == "round":
            logger.warning("%s has no %s: this round's pool of fakes starts empty.", folder, os.path.basename(pool))

    def save_method_state(self, folder: str) -> None:
        """Write the round and its reference (``None`` in round 1: it is rebuilt from the inputs) into ``folder``, and
        each process's pool of fakes, so that a resume continues the round with the same reference and fakes. Both
        are written at every save, empty or not, so no file of another run survives in a reused folder."""
        # Full tensors (gathered under ZeRO-3/FSDP2, so every process takes part), written by the main process.
        ref = self._ref_snapshot if self._round > 0 else None
        if self._round > 0 and self.reference.kind == "model":
            ref = engines.full_state(unwrap_ddp(self.reference.ref_model))
        if self.args.should_save:
            torch.save({"round": self._round, "reference": ref}, os.path.join(folder, ROUND_STATE))
        pool = [[list(key), fake] for key, fake in self._pool.items()]
        torch.save(pool, os.path.join(folder, POOL_STATE.format(rank=self.accelerator.process_index)))

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._rounds_checked:
            self._warn_if_rounds_do_not_fit()
            self._rounds_checked = True
        target = self._round_at(self.state.global_step)
        if target != self._round:
            if self.state.global_step != target * self.round_length():
                logger.warning("No saved state for round %d: its reference is the current model.", target + 1)
            self._start_round(target)
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._times["step"] += time.perf_counter() - start
        return loss

    @torch.no_grad()
    def _start_round(self, index: int) -> None:
        """Make the current model the reference, without a second copy of the model under PEFT."""
        policy = self.accelerator.unwrap_model(self.model)
        if self.reference.kind == "model":
            engines.copy_weights(policy, unwrap_ddp(self.reference.ref_model))
        else:
            self._ref_snapshot = trainable_snapshot(policy)
        self._pool.clear()
        self._round = index

    @contextlib.contextmanager
    def _reference_model(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module to sample from and to score with as the reference, for the current round."""
        if self.reference.kind == "model":
            yield self.reference.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(model)
        if self._ref_snapshot is None:
            with adapter_disabled(unwrapped) as base:
                yield base
        else:
            with weights_swapped(unwrapped, self._ref_snapshot) as snapshot:
                yield snapshot

    # ------------------------------------------------------------------ fakes
    def _generator(self, mode: str, device: torch.device) -> torch.Generator:
        micro = self._micro_index((mode, self.state.global_step))
        seed = sampling_seed(
            self.args.seed + (mode == "eval"), self.state.global_step, self.accelerator.process_index, micro
        )
        return torch.Generator(device).manual_seed(seed)

    def _fakes(
        self, ref: torch.nn.Module, real: dict[str, torch.Tensor], mode: str
    ) -> list[tuple[list[int], list[int]]]:
        """One ``(prompt, completion)`` per real row: the row's prompt, a reference continuation (EOS kept)."""
        ids, labels, att = real["input_ids"], real["labels"], real["attention_mask"]
        if not bool(att[:, 0].all()):
            raise ValueError("DDO expects right-padded batches (SFT's collator); got a row starting with padding.")
        rows, lengths = ids.tolist(), [int(n) for n in att.sum(1).tolist()]
        keys = [tuple(row[:n]) for row, n in zip(rows, lengths)]
        prompts = [row[: prompt_end(lab, n)] for row, lab, n in zip(rows, labels.tolist(), lengths)]
        todo = [
            i for i, k in enumerate(keys) if self.args.fake_pool == "online" or mode == "eval" or k not in self._pool
        ]
        out = {i: (prompts[i], self._pool[keys[i]]) for i in range(len(keys)) if i not in todo}
        lockstep = engines.decodes_in_lockstep(self.accelerator)
        if todo or lockstep:
            # Under FSDP every process decodes while any does: one whose fakes all come from the pool samples a
            # throwaway row alongside the others, with a generator of its own (its seeded draws do not shift).
            rows = todo or [0]
            generator = self._generator(mode, ids.device) if todo else torch.Generator(ids.device).manual_seed(0)
            longest = int((labels[:, 1:] != IGNORE_INDEX).sum(1).max())  # token 0 is never scored
            budget = (self.args.max_length or 10**9) - max(len(prompts[i]) for i in rows)
            if budget < 1:
                raise ValueError(f"A prompt fills `max_length`={self.args.max_length}: no room for a fake completion.")
            start = time.perf_counter()
            samples = sample_completions(
                ref,
                [prompts[i] for i in rows],
                min(self.args.max_new_tokens or longest, budget),
                eos_token_id=self._eos,
                pad_token_id=self._pad,
                temperature=self.args.temperature,
                top_k=self.args.top_k,
                top_p=self.args.top_p,
                generator=generator,
                sync_ranks=lockstep,
            )
            if mode == "train":
                self._times["sampling"] += time.perf_counter() - start
            for i, (prompt, completion) in zip(todo, samples.rows()):
                out[i] = (prompt, completion)
                if self.args.fake_pool == "round" and mode == "train":
                    self._pool[keys[i]] = completion
        return [out[i] for i in range(len(keys))]

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        n_real = inputs["input_ids"].size(0)
        engine = self.reference.ref_model if self.reference.kind == "model" else model
        with torch.no_grad(), self.reference.autocast(), self._reference_model(model) as ref:
            with engines.sampling_weights(engine, self.accelerator):
                fakes = self._fakes(ref, inputs, mode)
            batch = append_completions(inputs, fakes, self._pad)
            ref_lp = token_logps(ref, batch)  # before the policy forward: the swap writes into trainable weights
        policy_lp = token_logps(model, batch)
        lengths = policy_lp.mask.sum(-1).clamp(min=1).float()
        policy, reference = policy_lp.sequence(), ref_lp.sequence()
        if self.args.length_normalize:
            policy, reference = policy / lengths, reference / lengths
        loss = ddo_loss(
            policy[:n_real], reference[:n_real], policy[n_real:], reference[n_real:], self.args.alpha, self.args.beta
        )
        delta = (policy.detach() - reference).float()
        per_row = torch.stack([delta[:n_real], delta[n_real:], lengths[:n_real], lengths[n_real:]], 1)  # (B, 4)
        self._rows[mode].append(self.accelerator.gather_for_metrics(per_row).cpu())
        return (loss, None) if return_outputs else loss

    def reset_metrics(self, mode: str) -> None:
        super().reset_metrics(mode)
        self._rows[mode] = []
        self._micro_index.reset()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if self._rows[mode]:
            store = _compat.metrics_store(self, mode)
            for key, value in ddo_metrics(torch.cat(self._rows[mode]), self.args.beta).items():
                store[f"ddo/{key}"] = [value]
            store["ddo/round"] = [self._round + 1]
            if mode == "train" and self._times["step"] > 0:
                store["ddo/sampling_time_share"] = [self._times["sampling"] / self._times["step"]]
            advice = length_mismatch_advice(
                store["ddo/fake_length"][0],
                store["ddo/real_length"][0],
                self.args.max_new_tokens,
                self.args.length_normalize,
            )
            if advice and not self._length_warned:
                logger.warning(advice)
                self._length_warned = True  # once a run: the cause does not change from one log to the next
        self._rows[mode] = []
        if mode == "train":  # an evaluation log must not cut the training window the sampling share covers
            self._times = {"sampling": 0.0, "step": 0.0}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ card
    def card_hyperparameters(self) -> dict[str, Any]:
        keys = ("alpha", "beta", "num_rounds", "round_steps", "fake_pool", "length_normalize", "max_new_tokens")
        return {k: getattr(self.args, k) for k in keys} | {"temperature": self.args.temperature}

    def card_extra(self, info: CardInfo) -> dict[str, Any]:
        return {
            "reference_is_base": info.is_adapter and self._reference_source == "adapter",
            "reference": self._reference_name or info.base_model,
            "rounds_completed": self._round + 1,
        }


def ddo_metrics(rows: torch.Tensor, beta: float) -> dict[str, float]:
    """From ``(N, 4)`` rows ``[delta_real, delta_fake, real_length, fake_length]``: log-ratios, accuracies, lengths.

    ``real_acc``/``fake_acc`` are the discriminator's accuracies (``sigmoid(beta delta)`` above/below 1/2);
    ``paired_acc`` is P[delta_real > delta_fake] over (real row, its fake), logged only: DDO is unpaired.
    """
    d_real, d_fake, real_len, fake_len = rows.float().unbind(1)
    return {
        "real_logratio": d_real.mean().item(),
        "fake_logratio": d_fake.mean().item(),
        "real_acc": (beta * d_real > 0).float().mean().item(),
        "fake_acc": (beta * d_fake < 0).float().mean().item(),
        "paired_acc": (d_real > d_fake).float().mean().item(),
        "real_length": real_len.mean().item(),
        "fake_length": fake_len.mean().item(),
    }
