"""Small facts about feeding a model, each written once: the model inside a DDP wrapper, eval mode for a block of work
that must not see dropout (the mode given back after it), a right-padded batch of token rows, the ids that end or pad
a sample, and where the prompt of a tokenized SFT row ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ._compat import pad
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


def right_padded(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded on the right with ``pad_id``, as SFT's collator pads:
    real tokens keep their positions (TRL's ``pad``)."""
    ids = pad([torch.tensor(list(r), dtype=torch.long) for r in rows], padding_value=pad_id)
    mask = pad([torch.ones(len(r), dtype=torch.long) for r in rows], padding_value=0)
    return ids, mask


def stop_and_pad_ids(model: torch.nn.Module, tokenizer: Any) -> tuple[list[int], int]:
    """The ids that end a sample (the tokenizer's EOS and every EOS of the model's generation config, as
    ``generate`` stops on them) and the id that pads one (the tokenizer's pad, else the first of those)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = sorted({tokenizer.eos_token_id, *([eos] if isinstance(eos, int) else eos or [])} - {None})
    return stops, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]


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
