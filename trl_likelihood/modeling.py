"""Small facts about feeding a model, each written once and used everywhere:

- ``unwrap_ddp``, ``core_model``: the model inside a DDP or engine wrapper, and under PEFT too;
- ``eval_mode``: eval mode for a block of work that must not see dropout, the mode given back after it;
- ``right_padded``: a right-padded batch of token rows, as SFT's collator pads;
- ``stop_and_pad_ids``: the ids that end a sample and the id that pads one;
- ``tokenize_prompt_completion``: a prompt and its completion tokenised as ``SFTTrainer`` tokenises them;
- ``prompt_end``: where the prompt of a row that SFT tokenized ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from trl.data_utils import common_prefix_length  # where SFT's completion starts

from ._compat import is_peft, pad
from .losses import IGNORE_INDEX


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode inside the block (no dropout: scores and samples must not depend on the step's random state), the
    mode the model had before after it, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (the model itself when not wrapped)."""
    return model.module if hasattr(model, "module") else model


def core_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a DDP or engine wrapper (``.module``) and a PEFT wrapper: the one that owns the
    embeddings, the config and the ``forward`` whose signature counts."""
    model = unwrap_ddp(model)
    return model.get_base_model() if is_peft(model) else model


def right_padded(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded on the right with ``pad_id``, as SFT's collator pads:
    real tokens keep their positions (TRL's ``pad``)."""
    ids = pad([torch.tensor(list(r), dtype=torch.long) for r in rows], padding_value=pad_id)
    mask = pad([torch.ones(len(r), dtype=torch.long) for r in rows], padding_value=0)
    return ids, mask


def stop_and_pad_ids(model: torch.nn.Module, tokenizer: Any) -> tuple[list[int], int]:
    """The ids that end a sample (the tokenizer's EOS and every EOS of the model's generation config, as
    ``generate`` stops on them) and the id that pads one (the tokenizer's pad, else the first of those, else 0: a
    right-padded position is masked out, so its id never changes a result)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = sorted({tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])} - {None})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0] if stops else 0
    return stops, pad


def prompt_end(labels: Sequence[int], length: int | None = None) -> int:
    """Where the prompt of a tokenized SFT row ends: the index of its first scored token, the first that is sampled
    rather than given (DDO's fakes and SequenceMatch's rollouts continue ``row[:prompt_end]``).

    ``labels`` are the row's as TRL's SFT preparation writes them, ``-100`` on every token that is not a target (the
    prompt under ``completion_only_loss``, other turns under ``assistant_only_loss``, padding); a row without
    ``labels`` is scored whole, as SFT's collator reads it (pass its ``input_ids``). ``length`` is the number of real
    tokens (default ``len(labels)``). Token 0 is never a target (nothing predicts it), so the prompt is at least
    that token: BOS, or the first token of plain text. A row with no scored token is all prompt but its last token,
    so every row has a prompt and a token after it (a one-token row: that token).
    """
    n = len(labels) if length is None else length
    return next((i for i in range(1, n) if labels[i] != IGNORE_INDEX), max(n - 1, 1))


@dataclass
class PromptCompletionIds:
    """A prompt and its completion tokenised as one row, as ``SFTTrainer`` tokenises prompt-completion data.

    Attributes:
        input_ids: the row's tokens, prompt then completion.
        completion_start: index of the completion's first token (SFT's ``completion_mask`` is 1 from there on).
        text: the text that was tokenised: ``prompt + completion`` (and EOS), or the chat template's rendering.
        offsets: each token's ``(start, end)`` characters in ``text`` when asked for (fast tokenizers only).
    """

    input_ids: list[int]
    completion_start: int
    text: str
    offsets: list[tuple[int, int]] | None = None


def tokenize_prompt_completion(
    tokenizer: Any, prompt: str | list[dict], completion: str | list[dict], add_eos: bool = True, offsets: bool = False
) -> PromptCompletionIds:
    """Tokenise ``prompt`` and ``completion`` into one row as TRL 1.16's ``SFTTrainer`` does (tested equal to it).

    Text (``prompt`` a string): ``tok(prompt)`` and ``tok(prompt + completion + eos)``, the EOS text appended unless
    the completion already ends with it (``add_eos``, SFT's ``add_eos``). Messages (``prompt`` a list of message
    dicts; ``completion`` messages too, or a string, taken as one assistant message): the chat template renders the
    prompt with ``add_generation_prompt=True`` and the whole conversation, each tokenised without special tokens of
    the tokenizer's own (``apply_chat_template(tokenize=True)``, which SFT calls, adds none); the tokens the template
    writes after the answer (e.g. ``<|im_end|>``) play EOS's part, so ``add_eos`` does not apply. In both, the
    completion starts where the two token lists diverge (TRL's ``common_prefix_length``).
    """
    if isinstance(prompt, str):
        text, prompt_text, kwargs = prompt + completion, prompt, {}
        eos = tokenizer.eos_token
        if add_eos and eos and not completion.endswith(eos):
            text += eos
    else:
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        text = tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)
        kwargs = {"add_special_tokens": False}
    prompt_ids = list(tokenizer(prompt_text, **kwargs)["input_ids"])
    encoded = tokenizer(text, return_offsets_mapping=offsets, **kwargs)
    ids = list(encoded["input_ids"])
    spans = [tuple(span) for span in encoded["offset_mapping"]] if offsets else None
    return PromptCompletionIds(ids, common_prefix_length(prompt_ids, ids), text, spans)
