"""Exact step-level metrics of a process reward model on the modular-addition task (ALGORITHMS.md 4(g)), with the
controls that make them mean something.

A scorer is anything with the ``StepScorer`` signature: ``ImplicitPRM(...).score`` (``trl_likelihood.scoring``), the
log pi_ref control, a random scorer, or the task's oracle. The metrics:

- (i) step AUROC: locally correct vs wrong steps, pooled; and inside bug cells only (right value vs bug value), the
  one that log pi_ref cannot pass because the reference itself prefers the bug value [calibration 1].
- (ii) first-error localisation: argmin of the step rewards is the wrong step, on responses with exactly one error.
- (iii) best-of-N accuracy on candidates sampled from pi_ref, selected by the min (and the sum) of the step rewards,
  next to random selection, majority vote over final answers and the oracle (any candidate correct).
- (iv) outcome AUROC of the summed step reward against the outcome label.

Ties count fractionally everywhere (AUROC 0.5 per tied pair; argmin/argmax credit split over the tied set), so a
constant scorer sits exactly at chance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..metrics import first_error_localisation, step_auroc, tie_credit
from .modarith import ModArithTask, Rollouts, load_reference


class StepScorer(Protocol):
    """Per-step rewards of responses given as steps: for each response ``len(steps)`` floats, as an array-like or as an
    object with a ``step_rewards`` attribute (``trl_likelihood.scoring.StepScores``), so ``ImplicitPRM(...).score``
    plugs in as it is."""

    def __call__(self, prompts: list[str], steps_list: list[list[str]]) -> Sequence[Any]: ...


def _score(scorer: StepScorer, prompts: list[str], steps_list: list[list[str]]) -> np.ndarray:
    """Call a scorer and check its output: ``(n, K)`` float64 (every response here has the task's K steps)."""
    out = scorer(prompts, steps_list)
    rewards = [np.asarray(getattr(r, "step_rewards", r), dtype=np.float64).reshape(-1) for r in out]
    if len(rewards) != len(steps_list) or any(len(r) != len(s) for r, s in zip(rewards, steps_list)):
        raise ValueError("A scorer must return one reward per step of every response.")
    return np.stack(rewards)


# ----- scorers -----


class RandomScorer:
    """Uniform random step rewards: the chance level of every metric."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, prompts: list[str], steps_list: list[list[str]]) -> list[np.ndarray]:
        return [self.rng.random(len(steps)) for steps in steps_list]


class OracleScorer:
    """Reward ``wrong_reward`` on locally wrong steps and 0 elsewhere, from the ground truth; ``+1`` is the reverse."""

    def __init__(self, task: ModArithTask, wrong_reward: float = -1.0) -> None:
        self.task, self.wrong_reward = task, wrong_reward

    def __call__(self, prompts: list[str], steps_list: list[list[str]]) -> list[np.ndarray]:
        correct = self.task.parse(prompts, steps_list).correct
        return list(np.where(correct, 0.0, self.wrong_reward))


class LogLikelihoodScorer:
    """The control: a step's reward is the reference's own log-likelihood of it, ``sum log pi_ref`` over its tokens.

    Steps own tokens as in ``ImplicitPRM.score``: the text is ``prompt + separator.join(steps)``, a token belongs to
    the step in which its last character lies (character offsets), and a step owns its text up to the first character
    of the next step, so the separator after a step is part of it. A step's reward is ``q^t - q^{t-1}`` of
    ALGORITHMS.md 4(b) with the policy term dropped. Prompt tokens and padding are never scored, and no EOS is
    appended (``ImplicitPRM`` adds one to the last step; pi_ref gives it probability ~1 here).
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, separator: str, batch_size: int = 1024
    ) -> None:
        self.model, self.tokenizer, self.separator, self.batch_size = model.eval(), tokenizer, separator, batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[str], steps_list: list[list[str]]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._score_batch(
                prompts[start : start + self.batch_size], steps_list[start : start + self.batch_size]
            )
        return out

    def _score_batch(self, prompts: list[str], steps_list: list[list[str]]) -> list[np.ndarray]:
        texts = [p + self.separator.join(s) for p, s in zip(prompts, steps_list)]
        enc = self.tokenizer(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0].numpy()  # (B, T-1)
        offsets = enc["offset_mapping"][:, 1:].numpy()  # of the targets
        out = []
        for row, (prompt, steps) in enumerate(zip(prompts, steps_list)):
            starts = len(prompt) + np.cumsum([len(s) + len(self.separator) for s in steps[:-1]])  # of steps 2..K
            tok_start, tok_end = offsets[row, :, 0], offsets[row, :, 1]
            keep = mask[row, 1:].numpy().astype(bool) & (tok_start >= len(prompt)) & (tok_end > tok_start)
            step = np.searchsorted(starts, tok_end - 1, side="right")  # the step holding the token's last character
            out.append(np.bincount(step[keep], weights=token_logps[row][keep], minlength=len(steps)))
        return out


# ----- pi_ref: sampling and its own sanity checks -----


@torch.no_grad()
def sample_candidates(
    model: PreTrainedModel,
    task: ModArithTask,
    num_prompts: int,
    n: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 4096,
) -> Rollouts:
    """``n`` pi_ref samples for each of ``num_prompts`` fresh prompts, ``(num_prompts * n)`` rows, a prompt's together.

    The format is forced (operands and separators are written, not sampled) and each value is drawn from pi_ref's
    distribution renormalised over the digits, so every candidate parses; ``reference_metrics`` reports how much mass
    pi_ref puts on the format, which is what forcing it ignores.
    """
    problems = task.solve(num_prompts, seed)
    x0, ops = problems.x0.repeat(n), problems.ops.repeat(n, axis=0)
    generator = torch.Generator().manual_seed(seed)
    values = sample_values(model, task, x0, ops, np.zeros_like(ops), 0, generator, temperature, batch_size)
    return task.evaluate(x0, ops, values)


@torch.no_grad()
def sample_values(
    model: PreTrainedModel,
    task: ModArithTask,
    x0: np.ndarray,
    ops: np.ndarray,
    values: np.ndarray,
    start: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    batch_size: int = 4096,
) -> np.ndarray:
    """A copy of ``values`` ``(n, K)`` whose steps ``start..K-1`` are drawn from pi_ref after the written prefix
    ``values[:, :start]``: ``sample_candidates``' sampler (format forced, values renormalised over the digits), shared
    with the Math-Shepherd rollouts that continue a response from one of its steps."""
    values = np.array(values, dtype=np.int64)
    digit0, positions = task.token_id["0"], task.value_positions().tolist()
    for begin in range(0, len(x0), batch_size):
        rows = slice(begin, begin + batch_size)
        for k in range(start, task.num_ops):
            ids = task.encode(task.evaluate(x0[rows], ops[rows], values[rows]))[:, : positions[k]]
            logits = model(input_ids=ids).logits[:, -1, digit0 : digit0 + task.modulus].double()
            draws = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
            values[rows, k] = draws.numpy()
    return values


@torch.no_grad()
def reference_metrics(model: PreTrainedModel, task: ModArithTask, rollouts: Rollouts) -> dict[str, float]:
    """How well pi_ref learned the solver, on solver samples ``rollouts``; ALGORITHMS.md 4(g)'s first sanity check.

    Returns:
        ``bug_value_prob``: mean pi_ref(bug value | bug cell), ~ ``task.bug_prob`` if learned. ``right_value_prob``:
        mean pi_ref(right value) outside bug cells, ~ ``1 - slip_prob``. ``value_kl``: mean KL(solver || pi_ref) per
        value, nats. ``format_prob``: mean pi_ref probability of the operand and separator tokens.
    """
    ids = task.encode(rollouts)
    logps = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[:, :-1]  # predicts ids[:, 1:]
    target_logps = logps.gather(-1, ids[:, 1:, None])[..., 0].numpy()
    value_pos = task.value_positions().numpy()
    response = np.arange(task.num_ops + 3, ids.shape[1])
    format_pos = np.setdiff1d(response, value_pos)
    digit0 = task.token_id["0"]
    value_probs = logps[:, value_pos - 1, digit0 : digit0 + task.modulus].exp().numpy()  # (n, K, M)
    prev = np.concatenate([rollouts.x0[:, None], rollouts.values[:, :-1]], axis=1)
    solver = task.value_probs(prev, rollouts.ops)
    solver_t, probs_t = torch.from_numpy(solver), torch.from_numpy(value_probs)
    kl = (torch.xlogy(solver_t, solver_t) - torch.xlogy(solver_t, probs_t)).sum(-1).numpy()  # 0 log 0 = 0
    bug = np.maximum(task.bug_value[prev, rollouts.ops], 0)  # any digit outside bug cells: masked out below
    bug_probs = np.take_along_axis(value_probs, bug[..., None], -1)[..., 0]
    right_probs = np.take_along_axis(value_probs, rollouts.right[..., None], -1)[..., 0]
    return {
        "bug_value_prob": float(bug_probs[rollouts.bug_cell].mean()),
        "right_value_prob": float(right_probs[~rollouts.bug_cell].mean()),
        "value_kl": float(kl.mean()),
        "format_prob": float(np.exp(target_logps[:, format_pos - 1]).mean()),
    }


# ----- the metrics -----


def step_metrics(scorer: StepScorer, data: Dataset) -> dict[str, float]:
    """Metrics (i), (ii) and (iv) on ``task.step_dataset(...)`` rows (solver responses with step ground truth).

    Returns:
        ``step_auroc`` (correct vs wrong steps, pooled), ``bug_auroc`` (right vs bug value inside bug cells),
        ``slip_auroc`` (correct steps vs slips), ``localisation`` / ``localisation_bug`` / ``localisation_slip``
        (first-error localisation on single-error responses, all / bug error / slip), ``outcome_auroc``.
    """
    cols = data[:]  # plain lists (``data["steps"]`` is a lazy ``Column``, which scorers need not accept)
    rewards = _score(scorer, cols["prompt"], cols["steps"])
    correct, bug_error = np.array(cols["step_correct"]), np.array(cols["bug_error"])
    in_bug_cell, label = np.array(cols["bug_cell"]), np.array(cols["label"])
    slip = ~correct & ~bug_error
    has_bug, has_slip = bug_error.any(-1), slip.any(-1)
    totals = rewards.sum(-1, keepdims=True)
    # The library's metric maths (what the shipped ``evaluate`` modules wrap); a subset of steps kept per response.
    return {
        "step_auroc": _steps_metric("step_auroc", rewards, correct),
        "bug_auroc": _steps_metric("step_auroc", rewards, correct, (in_bug_cell & correct) | bug_error),
        "slip_auroc": _steps_metric("step_auroc", rewards, correct, correct | slip),
        "localisation": _steps_metric("first_error_localisation", rewards, correct),
        "localisation_bug": _steps_metric("first_error_localisation", rewards[has_bug], correct[has_bug]),
        "localisation_slip": _steps_metric("first_error_localisation", rewards[has_slip], correct[has_slip]),
        "outcome_auroc": _steps_metric("step_auroc", totals, label[:, None]),  # one "step" per response
    }


def _steps_metric(name: str, rewards: np.ndarray, correct: np.ndarray, keep: np.ndarray | None = None) -> float:
    """``step_auroc`` or ``first_error_localisation`` on per-response step rewards and labels, ``keep`` selecting
    steps per response."""
    keep = np.ones_like(correct) if keep is None else keep
    predictions = [r[k] for r, k in zip(rewards, keep)]
    references = [c[k] for c, k in zip(correct, keep)]
    if not predictions:
        return float("nan")
    return _STEP_METRICS[name](predictions, references)


_STEP_METRICS = {"step_auroc": step_auroc, "first_error_localisation": first_error_localisation}


def best_of_n_accuracy(
    scorer: StepScorer, task: ModArithTask, candidates: Rollouts, n: int, ns: Sequence[int] = (4, 16)
) -> dict[str, float]:
    """Metric (iii): accuracy of the candidate with the best min (``bon{N}_min``) and sum (``bon{N}_sum``) reward.

    ``candidates`` are ``sample_candidates(..., n=n)``; best-of-N uses each prompt's first N of its ``n``.
    """
    rewards = _score(scorer, task.prompt_texts(candidates), task.step_texts(candidates)).reshape(-1, n, task.num_ops)
    correct = candidates.label.reshape(-1, n)
    out = {}
    for size in ns:
        for name, score in [("min", rewards[:, :size].min(-1)), ("sum", rewards[:, :size].sum(-1))]:
            out[f"bon{size}_{name}"] = float(tie_credit(score, correct[:, :size], "max").mean())
    return out


def best_of_n_baselines(candidates: Rollouts, n: int, ns: Sequence[int] = (4, 16)) -> dict[str, float]:
    """Selection without a scorer: ``random`` (expected accuracy of a uniform pick), ``majority`` (most frequent final
    answer, ties split) and ``oracle`` (some candidate is correct)."""
    correct, answers = candidates.label.reshape(-1, n), candidates.values[:, -1].reshape(-1, n)
    out = {}
    for size in ns:
        votes = (answers[:, :size, None] == answers[:, None, :size]).sum(-1)  # votes of each candidate's answer
        out[f"bon{size}_random"] = float(correct[:, :size].mean())
        out[f"bon{size}_majority"] = float(tie_credit(votes, correct[:, :size], "max").mean())
        out[f"bon{size}_oracle"] = float(correct[:, :size].any(-1).mean())
    return out


def run_prm_efficacy(
    task: ModArithTask,
    reference: PreTrainedModel | str,
    scorers: Mapping[str, StepScorer] | None = None,
    num_eval: int = 2000,
    num_prompts: int = 500,
    ns: Sequence[int] = (4, 16),
    seed: int = 1000,
    controls: bool = True,
) -> dict[str, dict[str, float]]:
    """Every metric for every scorer on the same held-out solver responses and the same pi_ref candidates.

    Args:
        reference: pi_ref, or the directory ``train_reference`` returned.
        scorers: e.g. ``{"implicit_prm": ImplicitPRM(...).score}``.
        seed: held-out data: ``task.step_dataset(num_eval, seed)`` and candidates from seed ``seed + 1``; keep it apart
            from the seeds of pi_ref's and the PRM's training data.
        controls: add ``"log_pi_ref"`` (``LogLikelihoodScorer``) and ``"random"`` to ``scorers``.

    Returns:
        ``{"reference": reference_metrics(...), "baselines": best_of_n_baselines(...), name: {...}, ...}``, where each
        scorer's dict holds its ``step_metrics`` and ``best_of_n_accuracy``.
    """
    model = load_reference(reference)[0] if isinstance(reference, str) else reference.eval()
    scorers = dict(scorers or {})
    if controls:
        scorers.setdefault("log_pi_ref", LogLikelihoodScorer(model, task.tokenizer(), task.step_separator))
        scorers.setdefault("random", RandomScorer(seed))
    data = task.step_dataset(num_eval, seed)
    n = max(ns)
    candidates = sample_candidates(model, task, num_prompts, n, seed + 1)
    results = {
        "reference": reference_metrics(model, task, task.solve(num_eval, seed)),
        "baselines": best_of_n_baselines(candidates, n, ns),
    }
    for name, scorer in scorers.items():
        results[name] = {**step_metrics(scorer, data), **best_of_n_accuracy(scorer, task, candidates, n, ns)}
    return results
