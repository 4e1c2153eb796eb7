"""SequenceMatch: imitation learning over sequences with a ``<bkspc>`` action and logits as soft Q-values.
Paper: Cundy & Ermon, "SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling with Backtracking",
ICLR 2024, arXiv:2306.05426. No official code. Maths, reconstruction and calibration: ALGORITHMS.md section 3.

    Q(s, a) = logit(a | s),  V(s) = logsumexp(logits(s)),  r(s, a) = Q(s, a) - gamma V(s')
    L_SM = -E_data[r] + E_mix[V(s) - gamma V(s')] + c_chi2 E_mix[r^2]        (chi^2-mixture, IQ-Learn form)
    loss = L_BC                              for the first ``bc_steps`` steps,
           (1 - sm_weight) L_BC + sm_weight L_SM   afterwards                  [paper, experimental setup]

Choices made here (the paper's Eq. 4/5 and its masking algorithm could not be read; ALGORITHMS.md 3(h)):
- Data trajectories are SFT's rows with noise augmentation, variant A of 3(a): before an expert token, with probability
  ``noise_prob``, a noise token is appended by the environment and the expert's next action is ``<bkspc>``. The noise
  token is part of the transition, never an action, so with ``chi2_coef=0`` and no rollouts the loss is exactly the
  discounted NLL (tested). Noise tokens are other tokens of the training completions (``noise_source="data"``, the
  "ground-truth noise" reading of Fig. 3) or uniform over the vocabulary.
- BC is MLE on those augmented trajectories, ``<bkspc>`` targets included; L_BC and L_SM share one forward pass. Both
  are means over trajectories (BC of each trajectory's per-action NLL), like DPO's per-sequence means: with equal
  per-device batches, gradient accumulation and several processes train exactly like one big batch (tested).
- All decision states of a trajectory come from one forward pass over its physical token stream with a 4-D attention
  mask and position ids over the tokens still alive (``states.states_batch``, built on the device; tested equal to
  replaying states). The ``<bkspc>`` tokens are left out of the rows (nothing reads or attends to them), and short
  trajectories (rollouts) share rows with a block-diagonal mask instead of being padded.
- Metrics stay on the device until ``log``: one gather and one host read per logging step, none in the loss.
- ``<bkspc>`` is masked out (logit -inf) at states whose completion is empty, in the loss as in generation: the
  prompt can never be deleted.
- Terminal: an absorbing state after EOS whose self-loop is summed in closed form up to a fixed horizon (default
  ``max_length``), so every trajectory is padded to one length (the paper's convention) and weighs the same; it was
  the calibration's best option: a constant logit shift then moves r by only (1 - gamma) times the shift. Or V = 0.
- Rollouts: every ``replay_refresh_steps`` steps (from the end of the BC phase) each process samples
  ``rollouts_per_refresh`` prompts of the training set and completes them with the current policy, backspace allowed
  (``generation.sample_with_backspace``), into a FIFO replay buffer of ``replay_buffer_size`` trajectories; each step
  draws ``rollouts_per_step`` of them. Randomness comes from private generators: a row's noise is seeded by (seed,
  global step, the row's tokens), prompts, sampling and buffer draws by (seed, global step, rank, micro-batch). So
  every process makes the same decisions, a resumed run the same ones as an uninterrupted run (the buffer is saved in
  every checkpoint), and without rollouts accumulation and several processes match one big batch exactly.
- Under PEFT the new token's embedding rows train through PEFT's ``trainable_token_indices``; the base stays frozen.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.logging import get_logger
from datasets import IterableDataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from .. import _compat, engines
from ..backspace import (
    BACKSPACE,
    Trajectory,
    add_backspace_token,
    augment_with_noise,
    saving_token_rows_only,
    with_trainable_token,
)
from ..cards import CardInfo
from ..data import checked_sft_datasets
from ..generation import sample_with_backspace, sampling_seed
from ..losses import IGNORE_INDEX, action_nll, sequence_nll, sequencematch_loss
from ..methods import METHODS
from ..modeling import prompt_end, stop_and_pad_ids
from ..states import state_logits, states_batch
from .base import (
    CardMixin,
    DeviceMetrics,
    LossOnlyEvaluation,
    MicroBatchIndex,
    check_config_fields,
    check_sft_loss_fields,
    resolve_args,
)
from .checkpoints import CheckpointedMethodState

logger = get_logger(__name__)
BUFFER_STATE = "sequencematch_buffer_rank{rank}.pt"  # in each checkpoint: this process's replay buffer

SEQUENCEMATCH_CITATION = """\
@inproceedings{cundy2024sequencematch,
    title     = {{SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling with Backtracking}},
    author    = {Chris Cundy and Stefano Ermon},
    booktitle = {International Conference on Learning Representations},
    year      = 2024,
    url       = {https://arxiv.org/abs/2306.05426}
}"""


@dataclass
class SequenceMatchConfig(SFTConfig):
    r"""[`~trl.SFTConfig`] plus SequenceMatch's fields. Data preparation (tokenisation, truncation, masks) is SFT's.

    Parameters:
        backspace_token (`str`, defaults to `"<bkspc>"`): the backspace action, added to the tokenizer.
        noise_prob (`float`, defaults to `0.1`): probability, per completion token, of inserting a noise token that the
            expert then deletes; the paper's "noise level" (Fig. 3). `0` gives no backspace examples. Keep it small:
            augmentation trains the policy in a slightly different MDP (ALGORITHMS.md 3(f)).
        noise_source (`str`, defaults to `"data"`): `"data"` draws noise tokens among the tokens of the training
            completions (realistic mistakes); `"uniform"` over the whole vocabulary (special tokens excluded).
        gamma (`float`, defaults to `0.998`): discount, in (0, 1] (the paper's value).
        chi2_coef (`float`, defaults to `0.5`): weight of the chi^2-mixture term E_mix[r^2]; 1/4 to 1/2 is the natural
            scale (ALGORITHMS.md 3(a)). `0` turns it off.
        divergence (`str`, defaults to `"chi2"`): `"chi2"` or `"kl"` (IQ-Learn's two options) for the data term.
        terminal (`str`, defaults to `"absorbing"`): the value after EOS; `"absorbing"`: an absorbing state padded to
            `horizon` steps; `"zero"`: V = 0.
        horizon (`int`, *optional*): steps every trajectory is padded to with the absorbing state (so that all weigh
            the same, the paper's padding convention); by default `max_length`, and never less than the longest
            trajectory of the batch. Lower it when `max_length` is far above your completions' length, or the
            absorbing tail outweighs the real steps.
        sm_weight (`float`, defaults to `0.5`): weight of L_SM in `(1 - sm_weight) L_BC + sm_weight L_SM` after the BC
            phase; `0` is BC (MLE on the augmented data).
        bc_steps (`int`, defaults to `0`): steps of BC alone first (the paper's warm start; starting from an SFT
            model with `noise_prob > 0` training is the same thing).
        replay_buffer_size (`int`, defaults to `256`), replay_refresh_steps (`int`, defaults to `50`),
            rollouts_per_refresh (`int`, defaults to `64`), rollouts_per_step (`int`, *optional*, defaults to the
            per-device batch size): the replay buffer of model trajectories; set `rollouts_per_step=0` for no rollouts.
        rollout_max_new_tokens (`int`, *optional*): most actions per rollout (`<bkspc>` included, so it may exceed
            `max_length`); by default twice the longest completion among the sampled prompts' rows, and at most twice
            the room `max_length` leaves after the prompt.
        rollout_temperature (`float`, defaults to `1.0`): sampling temperature of the rollouts.
    """

    disable_dropout: bool = field(default=True, metadata={"help": "Switch dropout off: Q-values must not be noisy."})
    backspace_token: str = field(default=BACKSPACE, metadata={"help": "The backspace action's token string."})
    noise_prob: float = field(default=0.1, metadata={"help": "Per-token probability of a noise token + <bkspc>."})
    noise_source: str = field(
        default="data",
        metadata={
            "help": "'data': noise from the training completions' tokens; 'uniform': any vocabulary token.",
            "choices": ["data", "uniform"],
        },
    )
    gamma: float = field(default=0.998, metadata={"help": "Discount in (0, 1]."})
    chi2_coef: float = field(default=0.5, metadata={"help": "Weight of the chi^2-mixture term (>= 0)."})
    divergence: str = field(default="chi2", metadata={"help": "'chi2' or 'kl'.", "choices": ["chi2", "kl"]})
    terminal: str = field(
        default="absorbing",
        metadata={"help": "Value after EOS: 'absorbing' or 'zero'.", "choices": ["absorbing", "zero"]},
    )
    horizon: int | None = field(default=None, metadata={"help": "Absorbing padding length (default: max_length)."})
    sm_weight: float = field(default=0.5, metadata={"help": "Weight of L_SM vs L_BC after the BC phase, in [0, 1]."})
    bc_steps: int = field(default=0, metadata={"help": "Steps of behaviour cloning alone before L_SM starts."})
    replay_buffer_size: int = field(default=256, metadata={"help": "Rollouts kept in the FIFO replay buffer."})
    replay_refresh_steps: int = field(default=50, metadata={"help": "Steps between two rounds of rollouts."})
    rollouts_per_refresh: int = field(default=64, metadata={"help": "Rollouts sampled per process at a refresh."})
    rollouts_per_step: int | None = field(default=None, metadata={"help": "Buffer rollouts per micro-batch."})
    rollout_max_new_tokens: int | None = field(default=None, metadata={"help": "Most actions per rollout."})
    rollout_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})

    def __post_init__(self):
        super().__post_init__()
        check_config_fields(
            self,
            numbers=(
                ("noise_prob", lambda v: 0 <= v < 1, "a number in [0, 1)"),
                ("gamma", lambda v: 0 < v <= 1, "a number in (0, 1]"),
                ("chi2_coef", lambda v: v >= 0, "a number >= 0"),
                ("sm_weight", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                ("rollout_temperature", lambda v: v > 0, "a positive number"),
            ),
            integers=(
                ("bc_steps", 0),
                ("replay_buffer_size", 1),
                ("replay_refresh_steps", 1),
                ("rollouts_per_refresh", 1),
                ("rollouts_per_step", 0),
                ("rollout_max_new_tokens", 1),
                ("horizon", 1),
            ),
            choices=(
                ("noise_source", ("data", "uniform")),
                ("divergence", ("chi2", "kl")),
                ("terminal", ("absorbing", "zero")),
            ),
        )
        if not self.backspace_token or not isinstance(self.backspace_token, str):
            raise ValueError(f"`backspace_token` must be a non-empty string, got {self.backspace_token!r}.")
        check_sft_loss_fields(self, "SequenceMatch", whole_sequences="builds its own states")


def _refuse_a_stream_it_must_index(train_dataset: Any, args: SequenceMatchConfig) -> None:
    """Rollout prompts (``sm_weight`` > 0) and ``noise_source="data"`` are drawn from the training rows by index,
    which a stream does not have; behaviour cloning with uniform noise reads the stream as SFT does."""
    uses = [f"`{n}`={getattr(args, n)!r}" for n, on in (("sm_weight", args.sm_weight > 0),
            ("noise_source", args.noise_source == "data")) if on]  # fmt: skip
    if isinstance(train_dataset, IterableDataset) and uses:
        raise ValueError(
            f"train_dataset is an IterableDataset (streaming), but {' and '.join(uses)} draw rollout prompts and "
            "noise tokens from the training rows by index. Load it without `streaming`, or train behaviour cloning "
            "with backspace on the stream: `sm_weight=0` and `noise_source='uniform'`."
        )


class SequenceMatchTrainer(CheckpointedMethodState, DeviceMetrics, CardMixin, LossOnlyEvaluation, SFTTrainer):
    """[`~trl.SFTTrainer`] on the same data, trained with SequenceMatch: ``<bkspc>``, noise, on-policy rollouts."""

    _name = "SequenceMatch"
    _tag_names = ["trl", "trl-likelihood", "sequencematch"]
    _paper = {"title": "SequenceMatch", "id": "2306.05426", "citation": SEQUENCEMATCH_CITATION}
    _card_template = METHODS["sequencematch"].card_template
    _metric_prefix = "sequencematch"
    loss_is_scaled_for_ga = False  # per-trajectory means: the Trainer divides by the accumulation steps

    def __init__(
        self,
        model: Any,
        args: SequenceMatchConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        args = resolve_args("SequenceMatchTrainer", model, args, SequenceMatchConfig, kwargs)
        train_dataset, eval_dataset = checked_sft_datasets(train_dataset, eval_dataset, args, processing_class)
        _refuse_a_stream_it_must_index(train_dataset, args)
        if isinstance(model, str):  # the token must be added before SFT wraps the model in PEFT
            model_id, kwargs_init = model, dict(args.model_init_kwargs or {})
            kwargs_init.setdefault("trust_remote_code", args.trust_remote_code)
            model = _compat.create_model_from_path(model_id, **kwargs_init)
            args.model_init_kwargs = None
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model_id, trust_remote_code=args.trust_remote_code)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if _compat.is_peft(model):
            raise ValueError(
                "Pass the base model and a `peft_config`: the <bkspc> token must be added before the adapter is made."
            )
        self.bkspc_id = add_backspace_token(model, tokenizer, args.backspace_token)
        if peft_config is not None:
            peft_config = with_trainable_token(peft_config, model, self.bkspc_id)
        super().__init__(
            model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        if args.disable_dropout:
            _compat.disable_dropout_in_model(self.model)
        self._eos, self._pad = stop_and_pad_ids(model, tokenizer)
        self._special = set(tokenizer.all_special_ids) | {self.bkspc_id}
        self._vocab_size = len(tokenizer)
        self._noise_ids = self._noise_token_ids()
        self.buffer: list[Trajectory] = []
        self._micro_index = MicroBatchIndex()
        self._refreshed: int | None = None  # the global step of the last refresh (a step refreshes once)

    # ------------------------------------------------------------------ randomness
    def _generator(
        self, purpose: str, micro: int = 0, device: torch.device | str = "cpu", mode: str | None = None
    ) -> torch.Generator:
        """A generator seeded by (seed, purpose, step, rank, micro-batch): the same decisions on every process, and
        after a resume the same as in an uninterrupted run; training's own RNG (dropout, data order) is untouched."""
        mode = mode or ("train" if self.model.training else "eval")
        tag = f"{mode}/{purpose}/{micro}"
        seed = sampling_seed(self.args.seed, self.state.global_step, self.accelerator.process_index, tag)
        return torch.Generator(device).manual_seed(seed)

    # ------------------------------------------------------------------ trajectories
    def _data_trajectories(self, inputs: dict[str, torch.Tensor]) -> list[Trajectory]:
        """SFT's rows as trajectories: prompt = tokens before the first scored one; noise inserted before actions.

        A row's noise is seeded by (seed, mode, global step, the row's tokens), not by its place in the batch, so how
        the rows are split over micro-batches and processes does not change it (accumulation and multi-process runs
        match one big batch exactly, tested).
        """
        host = torch.stack([inputs["input_ids"], inputs["labels"], inputs["attention_mask"].long()]).tolist()
        ids, labels, att = host  # one read of the batch: the noise is drawn on the host, per row
        mode = "train" if self.model.training else "eval"
        rows = []
        for row, lab, mask in zip(ids, labels, att):
            n = sum(mask)
            start = prompt_end(lab, n)
            rows.append((row[:start], row[start:n], [lab[i] != IGNORE_INDEX or i == start for i in range(start, n)]))
        out = []
        for prompt, completion, is_action in rows:
            if self.args.noise_prob > 0 and all(is_action):
                rng = random.Random(
                    sampling_seed(self.args.seed, self.state.global_step, mode, str(prompt + completion))
                )
                out.append(
                    augment_with_noise(
                        prompt,
                        completion,
                        p=self.args.noise_prob,
                        bkspc_id=self.bkspc_id,
                        noise_ids=self._noise_ids,
                        rng=rng,
                    )
                )
            else:  # gaps in the labels (assistant-only multi-turn): unscored tokens are forced, no noise
                out.append(Trajectory(prompt, completion, is_action))
        return out

    def _noise_token_ids(self) -> list[int]:
        """Noise tokens: those of the training completions (the scored tokens of the first 10,000 rows) for
        ``noise_source="data"``, else the whole vocabulary; never a special token or ``<bkspc>``. Fixed for the run,
        so no batch changes them."""
        ids: set[int] = set()
        dataset = self.train_dataset
        if self.args.noise_source == "data" and dataset is not None and hasattr(dataset, "select"):
            rows = dataset.select(range(min(len(dataset), 10_000)))
            column = "labels" if "labels" in rows.column_names else "input_ids"  # as SFT's collator reads a row
            for labels in rows[column]:
                ids.update(t for t in labels[1:] if t != IGNORE_INDEX)  # token 0 is never a target
        ids -= self._special
        if len(ids) < 2:
            ids = set(range(self._vocab_size)) - self._special
        return sorted(ids)

    def _rollout_prompts(self, count: int, generator: torch.Generator) -> tuple[list[list[int]], int]:
        """``count`` prompts of training rows (seeded draw) and the longest completion among those rows."""
        dataset = self.train_dataset
        index = torch.randint(len(dataset), (count,), generator=generator).tolist()
        prompts, longest = [], 1
        for i in index:
            row = dataset[i]
            ids = row["input_ids"]
            start = prompt_end(row.get("labels", ids))  # a row without labels is scored whole, as SFT's collator
            prompts.append(ids[:start])
            longest = max(longest, len(ids) - start)
        return prompts, longest

    @torch.no_grad()
    def refresh_buffer(self, model: torch.nn.Module) -> None:
        """Sample rollouts from the current policy and push them into the FIFO replay buffer."""
        # Explicit mode: the first step of a run (or of a resumed run) comes before the Trainer's ``model.train()``.
        generator = self._generator("rollout", device=self.accelerator.device, mode="train")
        prompts, longest = self._rollout_prompts(
            self.args.rollouts_per_refresh, self._generator("prompts", mode="train")
        )
        # Backspaces make the token stream longer than what survives of it: room for 2x the tokens max_length leaves.
        budget = (self.args.max_length or 10**9) - max(len(p) for p in prompts)
        if budget < 1:
            raise ValueError(f"A prompt fills `max_length`={self.args.max_length}: no room for a rollout.")
        with engines.sampling_weights(model, self.accelerator):
            samples = sample_with_backspace(
                self.accelerator.unwrap_model(model),
                prompts,
                self.args.rollout_max_new_tokens or min(2 * longest, 2 * budget),
                bkspc_token_id=self.bkspc_id,
                eos_token_id=self._eos,
                pad_token_id=self._pad,
                temperature=self.args.rollout_temperature,
                generator=generator,
                sync_ranks=engines.decodes_in_lockstep(self.accelerator),
            )
        self.buffer = (self.buffer + samples.trajectories())[-self.args.replay_buffer_size :]
        actions = [a for row in samples.actions for a in row]
        store = _compat.metrics_store(self, "train")
        store["sequencematch/rollout_backspace_rate"].append(
            sum(a == self.bkspc_id for a in actions) / max(len(actions), 1)
        )
        store["sequencematch/rollout_length"].append(len(actions) / max(len(samples.actions), 1))

    def _rollouts(self, micro: int) -> list[Trajectory]:
        count = self.args.rollouts_per_step
        count = self.args.per_device_train_batch_size if count is None else count
        if not self.buffer or count == 0:
            return []
        index = torch.randint(len(self.buffer), (count,), generator=self._generator("draw", micro)).tolist()
        return [self.buffer[i] for i in index]

    def _sm_active(self) -> bool:
        return self.args.sm_weight > 0 and self.state.global_step >= self.args.bc_steps

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step - self.args.bc_steps
        wants_rollouts = self.args.rollouts_per_step != 0 and self._sm_active()
        if wants_rollouts and step % self.args.replay_refresh_steps == 0 and self._refreshed != self.state.global_step:
            self.refresh_buffer(model)
            self._refreshed = self.state.global_step
        return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        micro = self._micro_index((self.model.training, self.state.global_step))
        data = self._data_trajectories(inputs)
        rollouts = self._rollouts(micro) if self._sm_active() else []
        loss = self.trajectory_loss(model, data, rollouts, inputs["input_ids"].device, self._sm_active())
        return (loss, None) if return_outputs else loss

    def trajectory_loss(
        self,
        model: torch.nn.Module,
        data: list[Trajectory],
        rollouts: list[Trajectory],
        device: torch.device,
        with_sm: bool,
    ) -> torch.Tensor:
        """BC on ``data``, and with ``with_sm`` the mixture with L_SM on ``data`` and ``rollouts``, from one forward
        pass over all their states (built on ``device``; rows shared where trajectories fit, no ``<bkspc>`` fed)."""
        mode = "train" if self.model.training else "eval"
        trajectories = data + rollouts
        batch = states_batch(
            trajectories,
            self.bkspc_id,
            self._pad,
            dtype=torch.bool,  # converted for the attention implementation by `state_logits`
            eos_token_id=self._eos[0] if self._eos else None,
            device=device,
            pack=True,
            feed_backspaces=False,
        )
        logits = state_logits(model, batch).float()  # a fresh tensor (gathered per state): written in place below
        # <bkspc> at an empty completion is not an action (the sampler forbids it): its state is the prompt's end.
        logits.select(-1, self.bkspc_id).masked_fill_(batch["state_empty"], float("-inf"))
        n_data = len(data)
        if not with_sm:  # BC on the data rows (a slice only when rollouts came along: it costs a full-size copy)
            keep = slice(None) if not rollouts else slice(n_data)
            bc = action_nll(logits[keep], batch["actions"][keep], batch["action_mask"][keep], reduction="sequence")
            self.record_metrics(mode, bc_loss=bc)
            return bc
        is_data = torch.arange(len(trajectories), device=logits.device) < n_data
        terms = sequencematch_loss(
            logits,
            batch["actions"],
            batch["action_mask"],
            batch["terminated"],
            is_data,
            gamma=self.args.gamma,
            chi2_coef=self.args.chi2_coef,
            divergence=self.args.divergence,
            terminal=self.args.terminal,
            eos_token_id=self._eos[0] if self._eos else -1,
            horizon=max(self.args.horizon or self.args.max_length or 0, batch["actions"].size(1)),
        )
        bc = sequence_nll(terms.action_logps[:n_data], batch["action_mask"][:n_data])  # Q - V of this pass
        loss = (1 - self.args.sm_weight) * bc + self.args.sm_weight * terms.loss
        names = ("linear", "value", "chi2", "expert_reward", "rollout_reward")
        self.record_metrics(mode, bc_loss=bc, **{name: getattr(terms, name) for name in names}, sm_loss=terms.loss)
        return loss

    def reset_metrics(self, mode: str) -> None:
        super().reset_metrics(mode)
        self._micro_index.reset()  # the same noise and fakes for the same data at the same step

    # ------------------------------------------------------------------ checkpoints
    def load_method_state(self, folder: str) -> None:
        """This process's replay buffer, as ``save_method_state`` wrote it."""
        file = os.path.join(folder, BUFFER_STATE.format(rank=self.accelerator.process_index))
        if not os.path.isfile(file):
            logger.warning(
                "%s has no %s: the replay buffer starts empty (it refills at the next refresh, every "
                "`replay_refresh_steps`).",
                folder,
                os.path.basename(file),
            )
        else:
            state = torch.load(file, weights_only=True)
            self.buffer = [Trajectory(*t) for t in state["buffer"]]
            self._refreshed = state["refreshed"]

    def save_method_state(self, folder: str) -> None:
        """Write this process's replay buffer into ``folder`` (a checkpoint)."""
        state = {"buffer": [[t.prompt, t.stream, t.is_action] for t in self.buffer], "refreshed": self._refreshed}
        torch.save(state, os.path.join(folder, BUFFER_STATE.format(rank=self.accelerator.process_index)))

    # ------------------------------------------------------------------ card
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        with saving_token_rows_only(self.model):
            super()._save(output_dir, state_dict)

    def card_hyperparameters(self) -> dict[str, Any]:
        keys = (
            "backspace_token", "noise_prob", "noise_source", "gamma", "chi2_coef", "divergence", "terminal",
            "sm_weight", "bc_steps", "replay_buffer_size", "replay_refresh_steps", "rollouts_per_refresh",
        )  # fmt: skip
        return {k: getattr(self.args, k) for k in keys}

    def card_extra(self, info: CardInfo) -> dict[str, Any]:
        return {"backspace_token": self.args.backspace_token, "backspace_id": self.bkspc_id}
