"""Explicit (stepwise) PRM at inference: a token classifier's log-odds of "correct" at the last token of each step.

The tokenisation here is the one ``StepwisePRMTrainer`` trains on (TRL's former ``PRMTrainer``): the prompt's tokens,
then each step tokenised on its own with the separator's tokens appended, so a step's label sits on the separator's
last token. Tokenising step by step (never the joined text) keeps the boundaries fixed whatever BPE would merge across
them, and the scorer reads exactly the positions that were trained.

    input_ids = prompt_ids + sum_t (tok(step_t) + tok(step_separator))
    r_t = logit_correct - logit_incorrect at step t's last token       q_t = r_1 + ... + r_t

Choices made here:
- The reward is the log-odds, not the probability: it is on the scale of the implicit PRM's reward (a logit of
  "correct", trained through ``sigmoid``), so the two scorers share ``aggregate_steps`` and the weighted vote, whose
  ``sigmoid(score)`` is then the classifier's own probability (with ``"min"``, that of the weakest step). Argmax and
  min rankings are the same as with probabilities. ``"sum"``/``"last"`` add log-odds (naive-Bayes evidence), which
  is not ``log P(every step correct)``; ``"min"`` is the default.
- A plain-text prompt gets the tokenizer's BOS (when it has one), as TRL did; a chat prompt (messages) is rendered by
  the chat template with ``add_generation_prompt=True`` and tokenised without special tokens (the template writes
  its own). Steps are always text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerBase
from transformers.utils.peft_utils import find_adapter_config_file

from .method_settings import read_method_settings
from .modeling import right_padded, stop_and_pad_ids
from .prm_scorer import PRMScorer, Prompt, StepScores, aggregate_steps, check_aggregate, is_messages
from .scoring import _load_tokenizer  # the model's tokenizer, or its base model's for an adapter saved without one

DEFAULT_STEP_SEPARATOR = "\n"  # StepwisePRMConfig's default (TRL's PRMConfig's), for a model saved without settings


@dataclass
class StepwiseTokens:
    """One tokenised stepwise row.

    Attributes:
        input_ids: prompt tokens, then each step's tokens followed by the separator's.
        step_ends: index in ``input_ids`` of the last token of each step that survived truncation, in step order.
        prompt_len: number of prompt tokens (after truncation).
        step_lengths: tokens of each surviving step, separator included.
    """

    input_ids: list[int]
    step_ends: list[int]
    prompt_len: int
    step_lengths: list[int]


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Text: BOS (when the tokenizer has one) + ``tok(prompt)``, as TRL's ``PRMTrainer``; messages: the chat template
    with the generation prompt, tokenised without special tokens."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)
    if not is_messages(prompt):
        raise ValueError(f"A prompt must be text or a non-empty list of message dicts, got {prompt!r:.80}.")
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_stepwise(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    steps: list[str],
    step_separator: str,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
) -> StepwiseTokens:
    """The trained token layout of ``(prompt, steps)``, truncated as TRL's ``PRMTrainer``: the prompt keeps its last
    ``max_prompt_length`` tokens, the steps their first ``max_completion_length``, then the whole its first
    ``max_length``. A step whose last token is cut has no end (and so no label or score)."""
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[-max_prompt_length:] if max_prompt_length > 0 else []
    separator = list(tokenizer(step_separator, add_special_tokens=False)["input_ids"]) if step_separator else []
    completion: list[int] = []
    ends, lengths = [], []
    for step in steps:
        step_ids = list(tokenizer(step, add_special_tokens=False)["input_ids"]) + separator
        completion += step_ids
        ends.append(len(completion) - 1)
        lengths.append(len(step_ids))
    if max_completion_length is not None:
        completion = completion[:max_completion_length]
    input_ids = prompt_ids + completion
    if max_length is not None:
        input_ids = input_ids[:max_length]
    kept = len(input_ids) - len(prompt_ids)  # completion tokens left (negative: the prompt itself was cut)
    survivors = [i for i, end in enumerate(ends) if end < kept]
    return StepwiseTokens(
        input_ids,
        step_ends=[len(prompt_ids) + ends[i] for i in survivors],
        prompt_len=min(len(prompt_ids), len(input_ids)),
        step_lengths=[lengths[i] for i in survivors],
    )


def stepwise_labels(tokens: StepwiseTokens, labels: list[Any], last_step_only: bool = False) -> list[int]:
    """Per-token labels: ``int(label)`` at each surviving step end, ``-100`` elsewhere; with ``last_step_only`` only
    the last step is labelled (TRL's ``train_on_last_step_only``: an outcome label read at the end)."""
    out = [-100] * len(tokens.input_ids)
    for step, end in enumerate(tokens.step_ends):
        if not last_step_only or step == len(labels) - 1:
            out[end] = int(labels[step])
    return out


def _load_classifier(name_or_path: str | os.PathLike, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    """A token classifier, or a PEFT model (base, adapter and saved head) for a folder with ``adapter_config.json``."""
    if find_adapter_config_file(str(name_or_path)) is not None:
        from peft import AutoPeftModelForTokenClassification

        return AutoPeftModelForTokenClassification.from_pretrained(name_or_path, **model_kwargs)
    return AutoModelForTokenClassification.from_pretrained(name_or_path, **model_kwargs)


class StepwisePRM(PRMScorer):
    """Scores responses step by step with a token-classification PRM (``StepwisePRMTrainer``); Best-of-N and weighted
    majority vote on top, with the same interface as ``ImplicitPRM``.

    Args:
        model: the trained classifier (2 labels, 1 = correct): a model, a local path or Hub id, or a PEFT adapter
            path (loaded with its base and its saved head).
        tokenizer: default: the model's, from its path (or its base model's).
        step_separator: appended to each step, as in training. Default: the one saved with a model given by path
            (``method_settings.json``), else ``"\\n"``.
        aggregate: default reduction over steps, one of ``AGGREGATES``.
        batch_size: responses per forward.
        device: where a loaded model goes; default: the model's device.
        model_kwargs: passed to ``from_pretrained`` when the model is given by path.
    """

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        step_separator: str | None = None,
        aggregate: str = "min",
        batch_size: int = 8,
        device: str | torch.device | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ):
        trained = (read_method_settings(model) or {}) if isinstance(model, str | os.PathLike) else {}
        if step_separator is None:
            step_separator = trained.get("step_separator", DEFAULT_STEP_SEPARATOR)
        check_aggregate(aggregate)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size!r}.")
        source = model
        self.model = model if isinstance(model, torch.nn.Module) else _load_classifier(model, model_kwargs or {})
        num_labels = getattr(self.model.config, "num_labels", None)
        if num_labels != 2:
            raise ValueError(
                f"A stepwise PRM is a 2-label token classifier (1 = correct); got num_labels={num_labels}."
            )
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(source, self.model)
        if device is not None:
            self.model.to(device)
        self.model.eval()  # no dropout at scoring time
        self.device = next(self.model.parameters()).device
        self.step_separator, self.aggregate, self.batch_size = step_separator, aggregate, batch_size

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, **kwargs: Any) -> StepwisePRM:
        """Load from a path or Hub id; an adapter is loaded on its base (``AutoPeftModelForTokenClassification``)."""
        return cls(model, **kwargs)

    @torch.no_grad()
    def _step_logodds(self, batch: list[StepwiseTokens]) -> list[torch.Tensor]:
        """Per response, ``(n_steps,)`` fp32 ``logit_1 - logit_0`` at the step ends; one right-padded forward."""
        _, pad = stop_and_pad_ids(self.model, self.tokenizer)
        input_ids, attention_mask = right_padded([t.input_ids for t in batch], pad)
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        logodds = (logits[..., 1].float() - logits[..., 0].float()).cpu()  # (B, T)
        return [logodds[row, t.step_ends] for row, t in enumerate(batch)]

    def _score_responses(self, prompts: list[Prompt], responses: list[list[str]], aggregate: str) -> list[StepScores]:
        tokens = [tokenize_stepwise(self.tokenizer, p, s, self.step_separator) for p, s in zip(prompts, responses)]
        results = []
        for i in range(0, len(tokens), self.batch_size):
            batch = tokens[i : i + self.batch_size]
            for t, logodds in zip(batch, self._step_logodds(batch)):
                r = logodds.double().tolist()
                q = logodds.double().cumsum(0).tolist()
                results.append(StepScores(r, q, aggregate_steps(r, q, aggregate), q[-1], t.step_lengths, aggregate))
        return results
