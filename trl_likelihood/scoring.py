"""Implicit PRM at inference: per-step rewards from the log-ratio of a model trained on outcome labels only.
Paper: Yuan et al., "Free Process Rewards without Process Labels", 2024, arXiv:2412.01981. Code: PRIME-RL/ImplicitPRM
(``eval/prm_eval_utils.py``). Maths: ALGORITHMS.md 4(a), inference lines of 4(b), pitfalls in 4(f).

    q_t = beta * sum_{i <= last token of step t} [log pi(y_i | x, y_<i) - log pi_ref(y_i | x, y_<i)]
    r_t = q_t - q_{t-1}        score = min_t r_t ("min"), sum_t r_t ("sum"), q_T ("last") or min_t q_t ("min_q")

Choices made here:
- The response is ``step_separator.join(steps)``, tokenised as TRL 1.16's ``SFTTrainer`` tokenises prompt-completion
  data (``modeling.tokenize_prompt_completion``), so scores are the rewards the model was trained on [ours, tested].
  Plain text: ``tok(prompt)`` and ``tok(prompt + response + eos)``, with EOS appended as SFT does. Conversational
  prompt (a list of messages): the chat template renders the prompt with ``add_generation_prompt=True`` and the
  prompt plus an assistant message holding the response; the tokens the template writes after the response (e.g.
  ``<|im_end|>``) play EOS's part. In both, the completion starts where the two token lists diverge (TRL's
  ``common_prefix_length``).
- The EOS (or the template's closing tokens) belongs to the last step, so the step rewards sum to the outcome reward
  of training; ``add_eos=False`` scores the response text alone.
- Step boundaries come from the token offsets of the full text, never from re-tokenised prefixes, which shift when
  BPE merges across a boundary (4(f)) [ours]. A token belongs to the step in which its last character lies; a step
  owns the text from its first character up to the first character of the next step, separator included. So
  ``q_t`` is read after the longest run of tokens that shows nothing of step t+1, and every response token belongs
  to exactly one step (a token straddling a boundary counts where it ends, once it is complete).
- ``reference="base"`` is the policy with its PEFT adapter disabled: one model in memory, two forwards a batch.
- Log-probs are fp32, from ``ratio.scoring_token_logps``: TRL's fused head where it has a Triton kernel, the model's
  own head on the scored positions elsewhere (CPU); step sums are accumulated in float64.
Tests check the identity: the step rewards sum to ``beta`` times a naive full-logits log-ratio of the response.
"""

from __future__ import annotations

import os
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils.peft_utils import find_adapter_config_file

from ._compat import is_peft
from .method_settings import read_method_settings
from .modeling import eval_mode, right_padded, stop_and_pad_ids, tokenize_prompt_completion
from .prm_scorer import AGGREGATES, PRMScorer, Prompt, StepScores, aggregate_steps, check_aggregate, is_messages
from .ratio import adapter_disabled, ensure_fused_head, scoring_token_logps

DEFAULT_BETA = 0.05  # ImplicitPRMConfig's default, for a policy saved without its settings
__all__ = ["AGGREGATES", "ImplicitPRM", "StepScores", "aggregate_steps", "likelihood_ratio_score"]
_PLACEHOLDER = "\ue000"  # a private-use character, to find where a chat template puts the assistant's content


@dataclass
class _Encoded:
    input_ids: list[int]
    prompt_len: int  # tokens before the completion (TRL's common prefix of the prompt and full tokenisations)
    token_step: list[int]  # step of each completion token, len(input_ids) - prompt_len entries
    num_steps: int


def _load_model(name_or_path: str, model_kwargs: dict[str, Any]) -> torch.nn.Module:
    """A causal LM, or a PEFT model (base + adapter) when ``name_or_path`` holds an ``adapter_config.json``."""
    if find_adapter_config_file(str(name_or_path)) is not None:
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(name_or_path, **model_kwargs)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **model_kwargs)


def _load_tokenizer(source: Any, policy: torch.nn.Module) -> PreTrainedTokenizerBase:
    """The policy's tokenizer: from its path, else (an adapter saved without one) from its base model's path."""
    candidates = [str(source)] if isinstance(source, str | os.PathLike) else []
    if is_peft(policy):
        candidates.append(policy.peft_config[policy.active_adapter].base_model_name_or_path)
    candidates.append(getattr(policy, "name_or_path", None))
    errors = []
    for name in dict.fromkeys(c for c in candidates if c):
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as err:  # no tokenizer files at this path
            errors.append(f"{name}: {err}")
    raise ValueError(f"Could not load a tokenizer for the policy; pass `tokenizer=`. Tried: {errors or 'nothing'}.")


def _trained_beta(policy: Any, beta: float | None, trained: float | None) -> float:
    """``beta`` as given, or the one the policy was trained with; a given one that differs from it is warned about."""
    if beta is None:
        return DEFAULT_BETA if trained is None else trained
    if trained is not None and beta != trained:
        warnings.warn(
            f"{policy} was trained with beta={trained}; scoring with beta={beta} scales every reward by "
            f"{beta / trained:.4g} (rankings are unchanged, weighted-vote weights are not).",
            stacklevel=3,
        )
    return beta


class ImplicitPRM(PRMScorer):
    """Scores responses step by step with ``beta * log pi/pi_ref``; Best-of-N and weighted majority vote on top.

    Args:
        policy: the trained PRM: a model, a local path or Hub id, or a PEFT adapter path (loaded with its base).
        reference: ``"base"`` (the policy's base model with the adapter disabled; no second model in memory), a model,
            or a path. It must share the policy's tokenizer.
        tokenizer: a fast tokenizer (offsets are needed); default: the policy's, from its path.
        beta: the training ``beta``, so scores equal the training rewards. Default: the ``beta`` saved with a policy
            given by path (``method_settings.json``, written by ``ImplicitPRMTrainer``), else 0.05; a different one
            given for such a policy is used, with a warning. A positive scale keeps argmax/min rankings but changes
            ``sigmoid(score)`` in the weighted vote (4(c)).
        step_separator: joins the steps into the response, as the PRM saw it. Default: the one saved with a policy
            given by path (``ImplicitPRMTrainer`` saves its ``step_separator``), else ``"\\n\\n"`` (the official
            eval's).
        aggregate: default reduction over steps, one of ``AGGREGATES``.
        add_eos: score the EOS (or the chat template's closing tokens) in the last step, as training does.
        batch_size: responses per forward.
        device: where loaded models go; default: the policy's device.
        model_kwargs: passed to ``from_pretrained`` when a model is given by path (e.g. ``{"dtype": torch.bfloat16}``).
    """

    def __init__(
        self,
        policy: torch.nn.Module | str | os.PathLike,
        reference: torch.nn.Module | str | os.PathLike = "base",
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        beta: float | None = None,
        step_separator: str | None = None,
        aggregate: str = "min",
        add_eos: bool = True,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ):
        trained = (read_method_settings(policy) or {}) if isinstance(policy, str | os.PathLike) else {}
        beta = _trained_beta(policy, beta, trained.get("beta"))
        step_separator = trained.get("step_separator", "\n\n") if step_separator is None else step_separator
        if not beta > 0:
            raise ValueError(f"`beta` must be positive, got {beta!r}.")
        check_aggregate(aggregate)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size!r}.")
        model_kwargs = model_kwargs or {}
        source = policy
        self.policy = policy if isinstance(policy, torch.nn.Module) else _load_model(policy, model_kwargs)
        self.reference_is_base = isinstance(reference, str) and reference == "base"
        if self.reference_is_base:
            if not is_peft(self.policy):
                raise ValueError("`reference='base'` needs a PEFT adapter as policy; pass a reference model or path.")
            self.reference = self.policy  # the same object, run with its adapter disabled
        elif isinstance(reference, torch.nn.Module):
            self.reference = reference
        else:
            self.reference = _load_model(reference, model_kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(source, self.policy)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(self.tokenizer).__name__} is not a fast tokenizer: step boundaries come from "
                "`return_offsets_mapping=True`, which only fast (Rust) tokenizers provide."
            )
        vocab = {m.get_output_embeddings().weight.shape[0] for m in (self.policy, self.reference)}
        if len(vocab) != 1:  # padded vocabularies can differ under one tokenizer, so this only warns
            msg = f"Policy and reference output sizes differ {sorted(vocab)}: do they share a tokenizer?"
            warnings.warn(msg, stacklevel=2)
        for model in (self.policy, self.reference):
            if device is not None:
                model.to(device)
            model.eval()  # no dropout at scoring time
            ensure_fused_head(model)
        self.device = next(self.policy.parameters()).device
        self.beta, self.step_separator, self.aggregate = float(beta), step_separator, aggregate
        self.add_eos, self.batch_size = add_eos, batch_size

    @classmethod
    def from_pretrained(
        cls, policy: str | os.PathLike, reference: str | os.PathLike | torch.nn.Module = "base", **kwargs: Any
    ) -> ImplicitPRM:
        """Load from a path or Hub id; a PEFT adapter is loaded on its base (``AutoPeftModelForCausalLM``)."""
        return cls(policy, reference, **kwargs)

    # ------------------------------------------------------------------ tokenisation
    def _response_start(self, prompt: Prompt, response: str, text: str) -> int:
        """The response's first character in ``text``, the tokenised prompt + response (the chat template's rendering
        for messages, which must hold the response verbatim)."""
        if isinstance(prompt, str):
            return len(prompt)
        # where the content goes: render a private-use placeholder, then check the response sits there verbatim
        message = {"role": "assistant", "content": _PLACEHOLDER}
        probe = self.tokenizer.apply_chat_template([*prompt, message], tokenize=False)
        head, found, tail = probe.partition(_PLACEHOLDER)
        if not response or not found or text != head + response + tail:
            raise ValueError(f"The chat template does not render the response verbatim: {response!r:.80}.")
        return len(head)

    def _encode(self, prompt: Prompt, steps: list[str]) -> _Encoded:
        response = self.step_separator.join(steps)
        if not isinstance(prompt, str) and not is_messages(prompt):
            raise ValueError(f"A prompt must be text or a non-empty list of message dicts, got {prompt!r:.80}.")
        row = tokenize_prompt_completion(self.tokenizer, prompt, response, self.add_eos, offsets=True)
        start = self._response_start(prompt, response, row.text)
        ids, offsets, prompt_len = row.input_ids, row.offsets, row.completion_start
        if prompt_len == 0:
            raise ValueError("The prompt tokenises to nothing: the first response token would have no context.")
        step_starts, pos = [], start  # first character of steps 1..K-1 in `row.text`
        for step in steps[:-1]:
            pos += len(step) + len(self.step_separator)
            step_starts.append(pos)
        end = start + len(response)
        token_step, last_char = [], start
        for i in range(prompt_len, len(ids)):
            begin, stop = offsets[i]
            if not self.add_eos and begin >= end and stop > begin:  # the template's closing tokens
                ids = ids[:i]
                break
            if stop > begin:  # empty spans (post-processor specials) stay with the token before them
                last_char = stop - 1
            token_step.append(bisect_right(step_starts, last_char))
        return _Encoded(ids, prompt_len, token_step, len(steps))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _token_logratios(self, batch: list[_Encoded]) -> list[torch.Tensor]:
        """Per response, ``(n_response_tokens,)`` fp32 ``log pi - log pi_ref``; one policy, one reference forward."""
        _, pad = stop_and_pad_ids(self.policy, self.tokenizer)
        input_ids, attention_mask = right_padded([e.input_ids for e in batch], pad)
        labels = torch.full_like(input_ids, -100)  # only response tokens are scored
        for row, e in enumerate(batch):
            labels[row, e.prompt_len : len(e.input_ids)] = input_ids[row, e.prompt_len : len(e.input_ids)]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        policy = scoring_token_logps(self.policy, inputs).logps
        if self.reference_is_base:
            with adapter_disabled(self.policy) as base:
                reference = scoring_token_logps(base, inputs).logps
        else:
            reference = scoring_token_logps(self.reference, inputs).logps
        delta = (policy - reference).cpu()  # (B, T-1): position j predicts token j + 1
        return [delta[row, e.prompt_len - 1 : len(e.input_ids) - 1] for row, e in enumerate(batch)]

    def _result(self, e: _Encoded, logratio: torch.Tensor, aggregate: str) -> StepScores:
        steps = torch.tensor(e.token_step, dtype=torch.long)
        rewards = torch.zeros(e.num_steps, dtype=torch.float64).index_add_(0, steps, self.beta * logratio.double())
        q_values = rewards.cumsum(0)  # q_t at each step's last token; r_t = q_t - q_{t-1} are the step sums
        r, q = rewards.tolist(), q_values.tolist()
        counts = torch.bincount(steps, minlength=e.num_steps).tolist()
        return StepScores(r, q, aggregate_steps(r, q, aggregate), q[-1], counts, aggregate)

    def _score_responses(self, prompts: list[Prompt], responses: list[list[str]], aggregate: str) -> list[StepScores]:
        encoded = [self._encode(p, s) for p, s in zip(prompts, responses)]
        results = []
        for i in range(0, len(encoded), self.batch_size):
            batch = encoded[i : i + self.batch_size]
            for e, logratio in zip(batch, self._token_logratios(batch)):
                results.append(self._result(e, logratio, aggregate))
        return results


# ---------------------------------------------------------------------- whole-sequence likelihoods and their ratio
Sequences = list[str] | list[list[int]]


def _token_rows(sequences: Sequences, tokenizer: PreTrainedTokenizerBase | None) -> list[list[int]]:
    """Token ids per sequence: texts go through ``tokenizer`` (special tokens added, as the model saw them)."""
    if not isinstance(sequences, list) or not sequences:  # a padded tensor would score its padding: not accepted
        raise ValueError("`texts` must be a non-empty list of strings or of token-id lists (without padding).")
    if all(isinstance(s, str) for s in sequences):
        if tokenizer is None:
            raise ValueError("`texts` holds strings: pass the `tokenizer` that turns them into the model's ids.")
        return [list(ids) for ids in tokenizer(sequences)["input_ids"]]
    if not all(isinstance(s, list) and all(isinstance(t, int) for t in s) for s in sequences):
        raise ValueError("`texts` must be all strings or all lists of token ids, not a mix.")
    return sequences


def _padded_batch(rows: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels``; every token after the first is scored."""
    input_ids, attention_mask = right_padded(rows)
    labels = input_ids.masked_fill(attention_mask == 0, -100)  # the pad id never matters: its label is ignored
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": labels.to(device),
    }


@torch.no_grad()
def sequence_log_likelihood(
    model: torch.nn.Module,
    texts: Sequences,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    batch_size: int = 8,
    reference_adapter_disabled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(x)`` of each sequence under a causal LM, and how many tokens it sums over.

    Args:
        model: a causal LM (or a PEFT model); it is patched once with TRL's fused head (``ratio.ensure_fused_head``)
            and put back in its train/eval mode afterwards.
        texts: strings (tokenised with ``tokenizer``, special tokens added) or lists of token ids (used as given).
            The first token has no context and is not scored; every later one is. No EOS is appended.
        reference_adapter_disabled: score with the PEFT adapter disabled (the base model).

    Returns:
        ``(log_p, num_tokens)``, both ``(n,)``: float64 sums of fp32 token log-probs, in nats, and long counts.
    """
    rows = _token_rows(texts, tokenizer)
    if any(len(r) < 2 for r in rows):
        raise ValueError("Every sequence needs at least two tokens: the first one is only context.")
    ensure_fused_head(model)
    device = next(model.parameters()).device
    sums, counts = [], []
    with eval_mode(model):  # no dropout while scoring
        for start in range(0, len(rows), batch_size):
            batch = _padded_batch(rows[start : start + batch_size], device)
            if reference_adapter_disabled:
                with adapter_disabled(model) as base:
                    lp = scoring_token_logps(base, batch)
            else:
                lp = scoring_token_logps(model, batch)
            sums.append(lp.logps.double().sum(-1).cpu())  # unscored positions hold 0
            counts.append(lp.mask.sum(-1).cpu())
    return torch.cat(sums), torch.cat(counts)


def likelihood_ratio_score(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    texts: Sequences,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    normalize: bool = False,
    batch_size: int = 8,
) -> torch.Tensor:
    """Per-sequence ``log p_model(x) - log p_ref(x)``: an out-of-distribution score for a fine-tuned model.

    Fine-tuning raises the likelihood of sequences like its data relative to the base model, so the ratio is higher
    for in-distribution text than for text the fine-tuning never saw; the base's own preference for generic text
    cancels out, which ``log p_model`` alone does not do.

    Args:
        model: the fine-tuned causal LM (or PEFT model).
        reference: the base model; ``None`` with a PEFT ``model`` means the base is ``model`` with its adapter
            disabled (one model in memory). Both must share the tokenizer.
        texts: strings (with ``tokenizer``) or token-id lists; all tokens but the first are scored, as in
            ``sequence_log_likelihood``.
        normalize: divide by the number of scored tokens (a per-token mean), so that long sequences do not dominate.

    Returns:
        ``(n,)`` float64, in nats (per token with ``normalize``); higher means more like the fine-tuning data.
    """
    if reference is None and not is_peft(model):
        raise ValueError("`reference=None` needs a PEFT model (the base is the model with its adapter disabled).")
    log_p, num_tokens = sequence_log_likelihood(model, texts, tokenizer, batch_size=batch_size)
    if reference is None:
        ref_log_p, _ = sequence_log_likelihood(
            model, texts, tokenizer, batch_size=batch_size, reference_adapter_disabled=True
        )
    else:
        ref_log_p, _ = sequence_log_likelihood(reference, texts, tokenizer, batch_size=batch_size)
    ratio = log_p - ref_log_p
    return ratio / num_tokens if normalize else ratio
