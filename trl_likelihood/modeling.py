"""Small facts about a model object used everywhere: the model inside a DDP wrapper, and eval mode for a block of work
that must not see dropout, with the mode given back after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
