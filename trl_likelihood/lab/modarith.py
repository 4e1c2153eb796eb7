"""Chained modular addition solved by a noisy solver with "bug cells": the known-ground-truth task on which the
implicit PRM's claim, step credit from outcome labels alone, can be measured. Protocol: ALGORITHMS.md 4(g), with both
of its calibration corrections.

    prompt   = "x0 o1 ... oK ? "          response = "o1 v1 ; o2 v2 ; ... ; oK vK"
    correct  v_k = (v_{k-1} + o_k) mod M,  v_0 = x0        outcome label = (v_K == (x0 + sum o) mod M)

Choices made here:
- Bug cells: a fixed random ``bug_fraction`` of the M*M cells (v_{k-1}, o_k), each with one fixed wrong value that the
  solver writes with probability ``bug_prob``; elsewhere a uniform wrong digit with probability ``slip_prob``. A
  reference trained by MLE then *prefers* the bug value, so log pi_ref alone cannot flag it: only outcome labels can
  [calibration 1]. The solver continues from the value it wrote, so errors propagate.
- The operand is written before each value, so every step is local and a 2-layer model learns the solver
  [calibration 2].
- One symbol is one token (WordLevel over whitespace); the prompt ends with a space, so ``prompt + completion`` and
  ``prompt + step_separator.join(steps)`` tokenize on symbol boundaries and character offsets map tokens to steps.
- Labels are recomputed from the values for any response (``evaluate``), solver samples or model samples alike [ours].
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerFast

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD, BOS, EOS, QUERY, SEP = "<pad>", "<bos>", "<eos>", "?", ";"


@dataclass
class Rollouts:
    """Responses to ``n`` prompts with their ground truth; every array has ``n`` rows and steps on the last axis.

    Attributes:
        x0: ``(n,)`` start values. ops: ``(n, K)`` operands. values: ``(n, K)`` the values written.
        right: ``(n, K)`` the locally right value ``(v_{k-1} + o_k) mod M`` given the value actually written before.
        correct: ``(n, K)`` step locally correct (``values == right``). bug_cell: ``(n, K)`` the step's cell
        ``(v_{k-1}, o_k)`` is a bug cell. bug_error: ``(n, K)`` the step wrote its cell's bug value.
        label: ``(n,)`` outcome, final value equals the true sum.
    """

    x0: np.ndarray
    ops: np.ndarray
    values: np.ndarray
    right: np.ndarray
    correct: np.ndarray
    bug_cell: np.ndarray
    bug_error: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.x0)


class ModArithTask:
    """A seeded noisy solver of chained modular addition (ALGORITHMS.md 4(g)).

    Args:
        num_ops: K, steps per response.
        modulus: M; digits ``0..M-1`` are the value and operand symbols.
        bug_fraction: share of the ``M*M`` cells that are bug cells (rounded to a whole number of cells).
        bug_prob: probability that the solver writes the bug value in a bug cell (else the right value).
        slip_prob: probability of a uniform wrong digit outside bug cells.
        seed: draws the bug cells and their values; data seeds are separate (``solve(n, seed)``).

    Attributes:
        bug_value: ``(M, M)`` int64, the wrong value of cell ``(v_prev, o)``, ``-1`` where the cell is not a bug cell.
        step_separator: the string between steps, ``" ; "``; a step is ``"o v"``.
    """

    step_separator = f" {SEP} "

    def __init__(
        self,
        num_ops: int = 6,
        modulus: int = 10,
        bug_fraction: float = 0.15,
        bug_prob: float = 0.7,
        slip_prob: float = 0.05,
        seed: int = 0,
    ) -> None:
        if num_ops < 1 or modulus < 2:
            raise ValueError(f"`num_ops` must be >= 1 and `modulus` >= 2, got {num_ops} and {modulus}.")
        for name, value in [("bug_fraction", bug_fraction), ("bug_prob", bug_prob), ("slip_prob", slip_prob)]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        self.num_ops, self.modulus, self.seed = num_ops, modulus, seed
        self.bug_fraction, self.bug_prob, self.slip_prob = bug_fraction, bug_prob, slip_prob
        rng = np.random.default_rng(seed)
        num_cells = modulus * modulus
        cells = rng.choice(num_cells, size=round(bug_fraction * num_cells), replace=False)
        self.bug_value = np.full((modulus, modulus), -1, dtype=np.int64)
        prev, op = np.divmod(cells, modulus)
        self.bug_value[prev, op] = (prev + op + rng.integers(1, modulus, len(cells))) % modulus  # never the right one
        self.symbols = [PAD, BOS, EOS] + [str(d) for d in range(modulus)] + [QUERY, SEP]
        self.token_id = {s: i for i, s in enumerate(self.symbols)}

    def config(self) -> dict:
        """The constructor arguments: what a cached reference must match."""
        keys = ["num_ops", "modulus", "bug_fraction", "bug_prob", "slip_prob", "seed"]
        return {k: getattr(self, k) for k in keys}

    @property
    def seq_len(self) -> int:
        """Tokens of ``<bos>`` + prompt + response + ``<eos>``."""
        return 1 + (self.num_ops + 2) + (3 * self.num_ops - 1) + 1

    # ----- the solver and the ground truth -----

    def evaluate(self, x0: np.ndarray, ops: np.ndarray, values: np.ndarray) -> Rollouts:
        """Ground-truth labels of arbitrary responses (solver or model samples): one source of truth for both."""
        x0, ops, values = (np.asarray(a, dtype=np.int64) for a in (x0, ops, values))
        prev = np.concatenate([x0[:, None], values[:, :-1]], axis=1)
        right = (prev + ops) % self.modulus
        bug = self.bug_value[prev, ops]
        truth = (x0 + ops.sum(1)) % self.modulus
        return Rollouts(x0, ops, values, right, values == right, bug >= 0, values == bug, values[:, -1] == truth)

    def solve(self, n: int, seed: int, responses_per_prompt: int = 1) -> Rollouts:
        """``n`` fresh problems (uniform digits) and the noisy solver's answers; ``seed`` fixes both.

        With ``responses_per_prompt = k > 1``, ``n // k`` problems are each answered ``k`` times (consecutive rows):
        the several responses per prompt that pairwise (DPO-style) training needs.
        """
        rng = np.random.default_rng([self.seed, seed])
        problems = n // responses_per_prompt
        x0 = rng.integers(0, self.modulus, problems)
        ops = rng.integers(0, self.modulus, (problems, self.num_ops))
        if responses_per_prompt > 1:
            x0, ops = np.repeat(x0, responses_per_prompt), np.repeat(ops, responses_per_prompt, axis=0)
        return self.answer(x0, ops, rng)

    def answer(self, x0: np.ndarray, ops: np.ndarray, rng: np.random.Generator) -> Rollouts:
        """The noisy solver on given problems: bug cells, slips, and errors that propagate."""
        n = len(x0)
        values = np.empty_like(ops)
        prev = x0
        for k in range(self.num_ops):
            right = (prev + ops[:, k]) % self.modulus
            bug = self.bug_value[prev, ops[:, k]]
            u, slip = rng.random(n), rng.integers(1, self.modulus, n)
            v = np.where((bug < 0) & (u < self.slip_prob), (right + slip) % self.modulus, right)
            values[:, k] = prev = np.where((bug >= 0) & (u < self.bug_prob), bug, v)
        return self.evaluate(x0, ops, values)

    def value_probs(self, prev: np.ndarray, ops: np.ndarray) -> np.ndarray:
        """The solver's exact distribution of the next value given the cell, ``(..., M)``: the target pi_ref learns."""
        prev, ops = np.asarray(prev), np.asarray(ops)
        right, bug = (prev + ops) % self.modulus, self.bug_value[prev, ops]
        eye = np.eye(self.modulus)
        elsewhere = (1 - self.slip_prob) * eye[right] + self.slip_prob * (1 - eye[right]) / (self.modulus - 1)
        in_bug_cell = (1 - self.bug_prob) * eye[right] + self.bug_prob * eye[np.maximum(bug, 0)]
        return np.where((bug >= 0)[..., None], in_bug_cell, elsewhere)

    # ----- text and tokens -----

    def prompt_texts(self, rollouts: Rollouts) -> list[str]:
        """``"x0 o1 ... oK ? "``; the trailing space keeps the first step a separate word when texts are joined."""
        cols = np.concatenate([rollouts.x0[:, None], rollouts.ops], axis=1)
        return [" ".join(map(str, row)) + f" {QUERY} " for row in cols.tolist()]

    def step_texts(self, rollouts: Rollouts) -> list[list[str]]:
        """Each response as its steps ``["o1 v1", ..., "oK vK"]``."""
        return [
            [f"{o} {v}" for o, v in zip(o_row, v_row)]
            for o_row, v_row in zip(rollouts.ops.tolist(), rollouts.values.tolist())
        ]

    def parse(self, prompts: list[str], steps_list: list[list[str]]) -> Rollouts:
        """Inverse of the two text functions, then ``evaluate``: for scorers and model samples that hold only text."""
        nums = [list(map(int, p.split()[:-1])) for p in prompts]
        pairs = [[list(map(int, s.split())) for s in steps] for steps in steps_list]
        if any(len(n) != self.num_ops + 1 for n in nums) or any(len(p) != self.num_ops for p in pairs):
            raise ValueError(f"Every prompt needs {self.num_ops + 1} digits and every response {self.num_ops} steps.")
        x0, ops = np.array([n[0] for n in nums]), np.array([n[1:] for n in nums])
        values = np.array([[pair[1] for pair in p] for p in pairs])
        if not (np.array([[pair[0] for pair in p] for p in pairs]) == ops).all():
            raise ValueError("A step's operand differs from the prompt's.")
        return self.evaluate(x0, ops, values)

    def encode(self, rollouts: Rollouts) -> torch.Tensor:
        """Token ids of ``<bos>`` + prompt + response, ``(n, seq_len - 1)`` (no ``<eos>``), as the tokenizer gives."""
        n, k, digit0 = len(rollouts), self.num_ops, self.token_id["0"]
        ids = np.full((n, self.seq_len - 1), self.token_id[SEP], dtype=np.int64)
        ids[:, 0] = BOS_ID
        ids[:, 1] = digit0 + rollouts.x0
        ids[:, 2 : k + 2] = digit0 + rollouts.ops
        ids[:, k + 2] = self.token_id[QUERY]
        start = k + 3  # first response token
        ids[:, start::3] = digit0 + rollouts.ops
        ids[:, start + 1 :: 3] = digit0 + rollouts.values
        return torch.from_numpy(ids)

    def value_positions(self) -> torch.Tensor:
        """Positions of the K value tokens in ``encode``'s rows."""
        return torch.arange(self.num_ops) * 3 + self.num_ops + 4

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """One id per task symbol (WordLevel, whitespace split), ``<bos>`` prepended, ``<eos>`` and ``<pad>`` distinct.

        Offsets are character offsets into the input string, so a scorer can map tokens to steps.
        """
        backend = Tokenizer(models.WordLevel(self.token_id, unk_token=None))  # an unknown symbol is an error
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, BOS_ID)])
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=self.seq_len
        )

    # ----- TRL datasets -----

    def sft_dataset(self, n: int, seed: int, responses_per_prompt: int = 1) -> Dataset:
        """Solver samples as TRL prompt-completion data (MLE data for pi_ref); SFTTrainer appends the EOS."""
        rollouts = self.solve(n, seed, responses_per_prompt)
        completions = [self.step_separator.join(steps) for steps in self.step_texts(rollouts)]
        return Dataset.from_dict({"prompt": self.prompt_texts(rollouts), "completion": completions})

    def outcome_dataset(self, n: int, seed: int, responses_per_prompt: int = 1) -> Dataset:
        """Solver samples with their outcome label: TRL's unpaired ``prompt, completion, label`` (the PRM's data)."""
        rollouts = self.solve(n, seed, responses_per_prompt)
        data = self.sft_dataset(n, seed, responses_per_prompt).to_dict()
        return Dataset.from_dict({**data, "label": rollouts.label.tolist()})

    def step_dataset(self, n: int, seed: int) -> Dataset:
        """Solver samples with per-step ground truth, for evaluation only (never train on the step columns).

        Columns: ``prompt``, ``completion``, ``label``, ``steps`` (list of ``"o v"``), ``step_correct``,
        ``bug_cell`` and ``bug_error`` (lists of bool, one per step). A wrong step that is not a bug error is a slip.
        """
        rollouts = self.solve(n, seed)
        steps = self.step_texts(rollouts)
        return Dataset.from_dict(
            {
                "prompt": self.prompt_texts(rollouts),
                "completion": [self.step_separator.join(s) for s in steps],
                "label": rollouts.label.tolist(),
                "steps": steps,
                "step_correct": rollouts.correct.tolist(),
                "bug_cell": rollouts.bug_cell.tolist(),
                "bug_error": rollouts.bug_error.tolist(),
            }
        )


# ----- the reference pi_ref: MLE on solver samples -----

REFERENCE_MARKER = "modarith_reference.json"


def reference_model(
    task: ModArithTask, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> GPT2LMHeadModel:
    """A fresh GPT-2 decoder for the task: learned absolute positions, tied embeddings, no dropout.

    Learned positions, not RoPE: copying operand k from the prompt to the response needs absolute positions, and a
    Qwen2 (RoPE) of the same size is still at chance after 600 steps where this one has learned the solver
    [calibration 2: "2 layers, d=64, learned positions"]. ``gelu`` is torch's fused op; GPT-2's default
    ``gelu_new`` is a chain of Python-level ops that costs a third of a CPU step here.
    """
    config = GPT2Config(
        vocab_size=len(task.symbols),
        n_positions=task.seq_len,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's global RNG
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def train_reference(
    task: ModArithTask,
    output_dir: str,
    num_samples: int = 10_000,
    max_steps: int = 800,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    hidden_size: int = 64,
    seed: int = 0,
    data_seed: int = 1,
    num_threads: int | None = 1,
) -> str:
    """Train pi_ref by MLE on solver samples with TRL's ``SFTTrainer`` and save model and tokenizer to ``output_dir``.

    Cached: if ``output_dir`` already holds a reference trained with the same task and arguments, nothing is trained.
    The defaults are the fastest setting found that learns the solver on CPU: 20-35 s on one shared core; over seeds
    0-2, per-value KL to the solver 0.016-0.025 nats and pi_ref(bug value | bug cell) 0.69-0.70. ``max_steps=2000``
    reaches KL 0.012 in about 55 s. A learning rate of 5e-3 or more stalls on the copy-the-operand plateau.
    ``num_threads=1``: on a shared 2-core machine a second thread made a step of this tiny model up to 10x slower
    (``None`` leaves torch's setting alone; the caller's setting is restored after training).

    Returns:
        ``output_dir``; ``load_reference(output_dir)`` gives the model and its tokenizer back.
    """
    from trl import SFTConfig, SFTTrainer  # heavy import, needed only here

    args_record = {
        "task": task.config(),
        "training": dict(
            num_samples=num_samples,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            hidden_size=hidden_size,
            seed=seed,
            data_seed=data_seed,
        ),
    }
    marker = os.path.join(output_dir, REFERENCE_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == args_record:
                return output_dir
    tokenizer = task.tokenizer()
    config = SFTConfig(
        output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=task.seq_len,
        gradient_checkpointing=False,  # SFTConfig turns it on; here it only recomputes a tiny forward
        seed=seed,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, max_steps // 8),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        trainer = SFTTrainer(
            model=reference_model(task, hidden_size=hidden_size, seed=seed),
            args=config,
            train_dataset=task.sft_dataset(num_samples, data_seed),
            processing_class=tokenizer,
        )
        trainer.train()
    finally:
        torch.set_num_threads(previous_threads)
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    with open(marker, "w") as f:  # written last: a partial save is never taken for a cached one
        json.dump(args_record, f, indent=2)
    return output_dir


def load_reference(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The saved reference in eval mode and its tokenizer."""
    model = GPT2LMHeadModel.from_pretrained(path).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(path)
