"""What every process reward model scorer shares: step scores, their aggregation, Best-of-N and the weighted vote.

``ImplicitPRM`` (``scoring``: partial sums of ``beta * log pi/pi_ref``) and ``StepwisePRM`` (``stepwise_prm``: a token
classifier's log-odds at each step's last token) differ only in how they turn ``(prompt, steps)`` into step rewards;
everything on top of that lives here once, so a user swaps one scorer for the other without changing the calling code
(ALGORITHMS.md 4(a) step 4, 4(c)).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

AGGREGATES = ("min", "sum", "last", "min_q")
Prompt = str | list[dict[str, Any]]  # plain text, or chat messages


@dataclass
class StepScores:
    """Process rewards of one response.

    Both scorers give rewards on the logit scale of "this is correct": the implicit PRM's ``beta * log pi/pi_ref`` is
    trained through ``sigmoid`` against correctness labels, and the explicit PRM's is the classifier's log-odds. So
    ``sigmoid(score)`` is a probability-like weight in the vote for either.

    Attributes:
        step_rewards: ``r_t``, one per step (implicit: ``q_t - q_{t-1}``, ``0.0`` for a step that owns no token;
            explicit: the log-odds of "correct" at the step's last token).
        q_values: cumulative ``q_t = r_1 + ... + r_t`` (implicit: the log-ratio up to step t's last token).
        score: ``step_rewards``/``q_values`` reduced by ``aggregate``.
        outcome_reward: ``q_values[-1]`` (implicit: ``beta * (log pi(y) - log pi_ref(y))`` over all response tokens).
        num_tokens: response tokens owned by each step; they sum to the number of response tokens.
        aggregate: the reduction that gave ``score``.
    """

    step_rewards: list[float]
    q_values: list[float]
    score: float
    outcome_reward: float
    num_tokens: list[int]
    aggregate: str


def aggregate_steps(step_rewards: list[float], q_values: list[float], aggregate: str) -> float:
    """Reduce a response's steps to one score; names follow ImplicitPRM issue #9 (single/accumulative x min/sum).

    ``"min"`` (single-min, the paper's Best-of-N default) is the weakest step; ``"sum"`` (single-sum) and ``"last"``
    are both the outcome reward (``"sum"`` adds the steps, ``"last"`` reads ``q_T``); ``"min_q"`` is accumulative-min.
    """
    if aggregate == "min":
        return min(step_rewards)
    if aggregate == "sum":
        return math.fsum(step_rewards)
    if aggregate == "last":
        return q_values[-1]
    if aggregate == "min_q":
        return min(q_values)
    raise ValueError(f"`aggregate` must be one of {AGGREGATES}, got {aggregate!r}.")


def is_messages(prompt: Any) -> bool:
    return isinstance(prompt, list) and len(prompt) > 0 and all(isinstance(m, dict) for m in prompt)


def check_aggregate(aggregate: str) -> str:
    if aggregate not in AGGREGATES:
        raise ValueError(f"`aggregate` must be one of {AGGREGATES}, got {aggregate!r}.")
    return aggregate


class PRMScorer:
    """``score``, ``best_of_n`` and ``weighted_majority_vote`` over a subclass's ``_score_responses``.

    A subclass sets ``self.aggregate`` (the default reduction) and turns aligned lists of prompts and responses (each
    a non-empty list of step strings, already checked) into one ``StepScores`` per response, in order.
    """

    aggregate: str = "min"

    def _score_responses(self, prompts: list[Prompt], responses: list[list[str]], aggregate: str) -> list[StepScores]:
        raise NotImplementedError

    def score(
        self,
        prompts: Prompt | list[Prompt],
        steps: list[str] | list[list[str]],
        aggregate: str | None = None,
    ) -> StepScores | list[StepScores]:
        """Step rewards of one response (``steps`` a list of str) or a batch (a list of lists of str).

        ``prompts`` is one prompt (text or messages), shared by every response, or one per response. Returns a
        ``StepScores``, or a list of them for a batch, in input order.
        """
        aggregate = check_aggregate(aggregate or self.aggregate)
        single = isinstance(steps, list) and len(steps) > 0 and all(isinstance(s, str) for s in steps)
        responses = [steps] if single else steps
        if not isinstance(responses, list) or not responses:
            raise ValueError("`steps` is empty: pass a list of step strings, or a list of such lists.")
        for i, response in enumerate(responses):
            if not isinstance(response, list) or not response or not all(isinstance(s, str) for s in response):
                raise ValueError(f"`steps[{i}]` must be a non-empty list of step strings, got {response!r:.80}.")
        if isinstance(prompts, str) or is_messages(prompts):
            prompts = [prompts] * len(responses)
        if not isinstance(prompts, list) or len(prompts) != len(responses):
            raise ValueError(f"Got {len(prompts)} prompts for {len(responses)} responses; pass one, or one each.")
        results = self._score_responses(prompts, responses, aggregate)
        return results[0] if single else results

    def best_of_n(
        self, prompt: Prompt, candidates: list[list[str]], aggregate: str | None = None
    ) -> tuple[int, list[float]]:
        """Index of the best-scoring candidate (the first on ties) and every candidate's score (4(a) step 4)."""
        scores = [r.score for r in self.score(prompt, _candidates(candidates), aggregate)]
        return max(range(len(scores)), key=scores.__getitem__), scores

    def weighted_majority_vote(
        self, prompt: Prompt, candidates: list[list[str]], answers: list[str], aggregate: str | None = None
    ) -> tuple[str, dict[str, float]]:
        """The answer with the largest ``sum sigmoid(score)`` over the candidates giving it, and every answer's weight.

        Answers are compared as given (normalise them first); the first answer seen wins a tie. ``sigmoid`` makes the
        weights depend on the reward scale (an implicit PRM's ``beta``, 4(c)).
        """
        if len(answers) != len(candidates):
            raise ValueError(f"Got {len(answers)} answers for {len(candidates)} candidates; pass one per candidate.")
        return weighted_vote(answers, [r.score for r in self.score(prompt, _candidates(candidates), aggregate)])


def weighted_vote(answers: list[str], scores: list[float]) -> tuple[str, dict[str, float]]:
    """The answer with the largest ``sum sigmoid(score)`` over its candidates (the first seen wins a tie), and every
    answer's weight: ``PRMScorer.weighted_majority_vote`` on scores already computed."""
    weights: dict[str, float] = {}
    for answer, score in zip(answers, scores):
        weights[answer] = weights.get(answer, 0.0) + sigmoid(score)
    return max(weights, key=weights.__getitem__), weights


def sigmoid(x: float) -> float:
    """Logistic function without overflow for large ``|x|``."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _candidates(candidates: list[list[str]]) -> list[list[str]]:
    """Candidates are a batch even when there is one, so ``score`` returns a list."""
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, list) for c in candidates):
        raise ValueError("`candidates` must be a non-empty list of responses, each a list of step strings.")
    return candidates


def load_prm(name_or_path: str | os.PathLike, **kwargs: Any) -> PRMScorer:
    """The scorer a saved PRM needs, so that code taking a path serves both kinds: ``StepwisePRM`` for a token
    classifier (``is_token_classifier``), else ``ImplicitPRM``. ``kwargs`` go to that scorer's ``from_pretrained``
    (e.g. ``reference=`` for an implicit PRM)."""
    if is_token_classifier(name_or_path):
        from .stepwise_prm import StepwisePRM

        return StepwisePRM.from_pretrained(name_or_path, **kwargs)
    from .scoring import ImplicitPRM

    return ImplicitPRM.from_pretrained(name_or_path, **kwargs)


def is_token_classifier(name_or_path: str | os.PathLike) -> bool:
    """Whether a saved model is an explicit PRM: a ``TOKEN_CLS`` adapter, or a ``...ForTokenClassification``."""
    from transformers import AutoConfig
    from transformers.utils.peft_utils import find_adapter_config_file

    adapter = find_adapter_config_file(str(name_or_path))
    if adapter is not None:
        with open(adapter, encoding="utf-8") as f:
            return json.load(f).get("task_type") == "TOKEN_CLS"
    architectures = AutoConfig.from_pretrained(name_or_path).architectures or []
    return any(a.endswith("ForTokenClassification") for a in architectures)
