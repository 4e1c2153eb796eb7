"""Likelihood diagnostics for any TRL trainer: watch a fixed probe set while the objective does its work.

Preference and likelihood objectives can move probability where the loss does not look. Two failure modes show on a
fixed set of reference completions, whatever the trainer:

- likelihood displacement: the log-likelihood of preferred completions falls while DPO-style margins grow (Razin et
  al., "Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization", arXiv:2410.08847);
- over-optimisation of likelihood: the next-token distribution collapses onto a few tokens, so the entropy over the
  top-k tokens falls and their total probability approaches 1.

``LikelihoodDiagnosticsCallback`` scores the probe at the start of training, at every logging step and at every
evaluation, logs ``diagnostics/probe_logp`` (mean log-likelihood of a probe completion, nats, summed over its tokens),
``diagnostics/probe_logp_change`` (its change since the start), ``diagnostics/topk_entropy`` and
``diagnostics/topk_mass`` (means over completion tokens), ``eval_``-prefixed at evaluation, and warns once per
threshold crossed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from . import _compat
from .modeling import eval_mode, right_padded, tokenize_prompt_completion

logger = logging.getLogger(__name__)

PREFIX = "diagnostics/"


@dataclass
class ProbeRow:
    """One tokenised probe: ``input_ids`` (prompt then completion) and where the completion starts."""

    input_ids: list[int]
    completion_start: int


def encode_probe(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase | None, add_eos: bool = True) -> ProbeRow:
    """Tokenise one probe as TRL tokenises prompt-completion data.

    Accepted rows: ``prompt_ids`` + ``completion_ids`` (used as given); ``prompt`` + ``completion`` (or ``chosen``)
    as text, or as chat messages (a text completion after a message prompt is one assistant message), tokenised as
    SFT tokenises them (``modeling.tokenize_prompt_completion``): the completion starts where ``tok(prompt)`` and
    ``tok(prompt + completion)`` diverge, and an EOS is appended to text (``add_eos``), as SFT and DPO do; a chat
    template's closing tokens play the EOS's part.
    """
    if "prompt_ids" in row and "completion_ids" in row:
        prompt, completion = list(row["prompt_ids"]), list(row["completion_ids"])
        return ProbeRow(prompt + completion, len(prompt))
    completion = row.get("completion", row.get("chosen"))
    if "prompt" not in row or completion is None:
        keys = sorted(row)
        raise ValueError(
            f"A probe row needs `prompt` and `completion` (or `chosen`), or `prompt_ids` and `completion_ids`; "
            f"got keys {keys}."
        )
    if tokenizer is None:
        raise ValueError("Text probes need a tokenizer: pass `tokenizer=` or train with a `processing_class`.")
    prompt = row["prompt"]
    tokens = tokenize_prompt_completion(tokenizer, prompt, completion, add_eos)
    if tokens.completion_start == 0 or tokens.completion_start >= len(tokens.input_ids):
        raise ValueError(f"Probe {prompt!r:.60}: the prompt must give tokens and the completion must add some.")
    return ProbeRow(tokens.input_ids, tokens.completion_start)


def _batch(rows: list[ProbeRow], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``(B, T-1)`` mask of the positions that predict a
    completion token."""
    ids, attention = right_padded([r.input_ids for r in rows])
    target = torch.zeros(len(rows), ids.shape[1] - 1, dtype=torch.bool)
    for i, r in enumerate(rows):
        target[i, r.completion_start - 1 : len(r.input_ids) - 1] = True
    return ids.to(device), attention.to(device), target.to(device)


@torch.no_grad()
def probe_statistics(
    model: torch.nn.Module, rows: list[ProbeRow], top_k: int = 10, batch_size: int = 4
) -> dict[str, float]:
    """Mean completion log-likelihood and top-k statistics of ``model`` on tokenised probes (no grad, eval mode).

    Returns:
        ``probe_logp``: mean over probes of the summed completion log-likelihood, nats. ``topk_mass``: mean over
        completion positions of the probability of the ``top_k`` most likely next tokens. ``topk_entropy``: mean
        entropy (nats) of that top-k distribution renormalised, at most ``log top_k``. The full ``(B, T, V)`` logits
        are built per batch, so keep ``batch_size`` small for large vocabularies.
    """
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64)  # logp sum, entropy sum, mass sum, completion tokens
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            ids, attention, target = _batch(rows[start : start + batch_size], device)
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
            logq = torch.log_softmax(logits.float(), dim=-1)  # (B, T-1, V)
            token_logp = logq.gather(-1, ids[:, 1:, None]).squeeze(-1)
            top = logq.topk(min(top_k, logq.shape[-1]), dim=-1).values  # (B, T-1, k) log-probs
            renorm = torch.log_softmax(top, dim=-1)
            entropy = -(renorm.exp() * renorm).sum(-1)
            per_token = torch.stack([token_logp, entropy, top.exp().sum(-1)])  # (3, B, T-1)
            totals[:3] += torch.where(target, per_token, 0.0).sum((1, 2)).double().cpu()
            totals[3] += target.sum().item()
    logp, entropy, mass, tokens = totals.tolist()
    return {"probe_logp": logp / len(rows), "topk_entropy": entropy / tokens, "topk_mass": mass / tokens}


class LikelihoodDiagnosticsCallback(TrainerCallback):
    """Logs likelihood diagnostics of a fixed probe set during training and evaluation, for any ``Trainer``.

    Args:
        probe: rows of prompt/completion pairs (``prompt`` + ``completion`` or ``chosen``, text or chat messages) or
            tokenised rows (``prompt_ids`` + ``completion_ids``); a list of dicts or a ``datasets.Dataset``. Keep it
            small (tens of rows): it is scored at every logging step.
        tokenizer: tokenises text probes; default: the trainer's ``processing_class``.
        top_k: how many most likely next tokens ``topk_entropy`` and ``topk_mass`` look at.
        logp_drop_threshold: warn when ``probe_logp`` has fallen by more than this many nats below its first value,
            taken at the start of training (of this run: after a resume, the resumed model's) or at the first
            evaluation if there is no training (likelihood displacement). ``None``: never.
        topk_mass_threshold: warn when ``topk_mass`` exceeds this (collapse onto few tokens). ``None``: never.
        topk_entropy_threshold: warn when ``topk_entropy`` falls below this (nats). ``None``: never.
        batch_size: probes per forward.
        add_eos: append the EOS to text completions, as SFT and DPO do.

    Each threshold warns once per callback (``logging.warning`` of ``trl_likelihood.diagnostics``).

    Logging: the values are added to the logs of every logging step (``diagnostics/<name>``) and of every evaluation
    (``eval_diagnostics/<name>``, also in the dict ``trainer.evaluate()`` returns), so they are in
    ``trainer.state.log_history``. Reporters (W&B, TensorBoard) are callbacks that transformers registers before the
    user's ``callbacks=[...]``; so that they see the values, the callback moves itself to the front of the trainer's
    callbacks when the trainer is built (``on_init_end``) or training starts. ``callback.attach(trainer)`` does the
    same explicitly.

    Multi-process: every process scores the whole probe with its own copy of the model, so values are identical on
    every rank, no communication is needed, and sharded models (FSDP, ZeRO-3) run the same forwards on every rank;
    warnings come from the main process only. PEFT models are scored as they are (adapter on), under ``no_grad``, in
    eval mode, and put back in train mode afterwards.
    """

    def __init__(
        self,
        probe: Iterable[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        top_k: int = 10,
        logp_drop_threshold: float | None = None,
        topk_mass_threshold: float | None = None,
        topk_entropy_threshold: float | None = None,
        batch_size: int = 4,
        add_eos: bool = True,
    ) -> None:
        self.probe = [dict(row) for row in probe]
        if not self.probe:
            raise ValueError("`probe` is empty: pass at least one prompt/completion row.")
        if top_k < 1 or batch_size < 1:
            raise ValueError(f"`top_k` and `batch_size` must be at least 1, got {top_k} and {batch_size}.")
        if logp_drop_threshold is not None and logp_drop_threshold < 0:
            raise ValueError(f"`logp_drop_threshold` is a drop in nats and must be >= 0, got {logp_drop_threshold}.")
        self.tokenizer, self.top_k, self.batch_size, self.add_eos = tokenizer, top_k, batch_size, add_eos
        self.thresholds = {
            "logp_drop": logp_drop_threshold,
            "topk_mass": topk_mass_threshold,
            "topk_entropy": topk_entropy_threshold,
        }
        self.rows: list[ProbeRow] | None = None
        self.initial: dict[str, float] | None = None
        self.warned: set[str] = set()
        self.history: list[dict[str, Any]] = []  # every computed value, with its step and stage

    def attach(self, trainer: Any) -> LikelihoodDiagnosticsCallback:
        """Register with ``trainer`` as its first callback, so that reporters' ``on_log`` see the diagnostics."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def compute(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, float]:
        """The diagnostics of ``model`` now (unprefixed names); the first call fixes the ``probe_logp`` baseline."""
        if self.rows is None:
            tokenizer = self.tokenizer or tokenizer
            self.rows = [encode_probe(row, tokenizer, self.add_eos) for row in self.probe]
        values = probe_statistics(model, self.rows, self.top_k, self.batch_size)
        if self.initial is None:
            self.initial = dict(values)
        values["probe_logp_change"] = values["probe_logp"] - self.initial["probe_logp"]
        return values

    def _warn(self, values: dict[str, float], state: TrainerState) -> None:
        crossed = {
            "logp_drop": lambda t: -values["probe_logp_change"] > t,
            "topk_mass": lambda t: values["topk_mass"] > t,
            "topk_entropy": lambda t: values["topk_entropy"] < t,
        }
        for name, threshold in self.thresholds.items():
            if threshold is None or name in self.warned or not crossed[name](threshold):
                continue
            self.warned.add(name)
            if state.is_world_process_zero:
                logger.warning(
                    "Likelihood diagnostics at step %d: %s crossed its threshold %s (probe_logp %.4g, change %.4g "
                    "nats; topk_mass %.4g; topk_entropy %.4g).",
                    state.global_step,
                    name,
                    threshold,
                    values["probe_logp"],
                    values["probe_logp_change"],
                    values["topk_mass"],
                    values["topk_entropy"],
                )

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Run before the reporters, so that their ``on_log`` carries the diagnostics."""
        self._run_first()

    def _run_first(self) -> None:
        handler = _compat.calling_callback_handler()
        if handler is not None and handler.callbacks[0] is not self:
            handler.callbacks.remove(self)  # the handler's loop goes on with the next callback: none is skipped
            handler.callbacks.insert(0, self)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """The baseline: the probe's log-likelihood under the model before its first step."""
        self._run_first()  # also for a callback added after the trainer was built (``trainer.add_callback``)
        if self.initial is None and kwargs.get("model") is not None:
            values = self.compute(kwargs["model"], kwargs.get("processing_class"))
            self.history.append({"step": state.global_step, "stage": "start", **values})

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        """Add the diagnostics to a training step's or an evaluation's logs (and to its ``log_history`` entry)."""
        prefix = _log_prefix(logs or {})
        if prefix is None or kwargs.get("model") is None:
            return
        values = self.compute(kwargs["model"], kwargs.get("processing_class"))
        self.history.append({"step": state.global_step, "stage": "eval" if prefix else "train", **values})
        self._warn(values, state)
        extra = {f"{prefix}{PREFIX}{k}": v for k, v in values.items()}
        last = state.log_history[-1] if state.log_history else {}
        if last.get("step") == state.global_step and logs.keys() <= last.keys():
            last.update(extra)  # the copy of these logs that Trainer.log appended just before calling on_log
        logs.update(extra)


def _log_prefix(logs: Mapping[str, Any]) -> str | None:
    """``""`` for a training step's logs, ``"eval_"`` (or the evaluation's own prefix) for an evaluation's, ``None``
    for the others (the end-of-training summary)."""
    if "loss" in logs:
        return ""
    for key in logs:
        if key.endswith("_runtime") and key != "train_runtime":
            return key[: -len("runtime")]
    return None
