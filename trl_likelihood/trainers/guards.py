"""Stops before harm: a non-finite loss never reaches the weights, a split that preparation emptied never starts a run,
and a ``compute_metrics`` that a loss-only evaluation would never call is refused."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)


class FiniteLossGuard:
    """Stop training at the first non-finite loss or gradient, before the optimizer step that would write NaN into
    the weights.

    ``Trainer`` runs the optimizer after the micro-batches' ``training_step``s; raising here leaves the weights, the
    optimizer state and every checkpoint already written as they were, and no later checkpoint is written. Under DDP
    the loss flag is reduced over the processes: a NaN on one rank poisons the averaged gradient of every rank, so all
    of them stop, at the same step, rather than one stopping and the others waiting for it. The gradients are checked
    once per optimizer step, after the last micro-batch's backward (so after DDP's all-reduce: every rank sees the
    same gradients): a finite loss can still have a NaN gradient (an ``inf * 0`` in a backward pass, fp16 overflow).
    """

    stop_on_nonfinite_loss: bool = True

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.stop_on_nonfinite_loss:
            finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
            if self.accelerator.num_processes > 1:
                finite = self.accelerator.reduce(finite, reduction="sum") / self.accelerator.num_processes
            if finite.item() < 1:  # a host sync, as transformers' own NaN/inf logging filter makes every step
                raise FloatingPointError(nonfinite_loss_message(loss, self.state.global_step))
            if self.accelerator.sync_gradients and not gradients_are_finite(model):
                raise FloatingPointError(nonfinite_loss_message(None, self.state.global_step))
        return loss


def gradients_are_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient held in ``.grad`` is finite (one norm over them all; engines such as DeepSpeed that keep
    gradients elsewhere are not checked here)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)))


def nonfinite_loss_message(loss: torch.Tensor | None, global_step: int) -> str:
    """The error: which step, what was kept, and where to look (``loss=None``: the loss was finite, a gradient not)."""
    if loss is None:
        what = "Non-finite gradient (the loss was finite)"
    else:
        value = loss.detach().float().mean().item()
        what = f"Non-finite training loss ({value} on this process, or non-finite on another)"
    return (
        f"{what} at global step {global_step + 1}: training stopped before its optimizer step, so the weights are "
        f"those of step {global_step} and no checkpoint after step {global_step} was written. Look for a too large "
        "learning rate or beta, fp16 overflow, or corrupt rows in that step's batch."
    )


class NonEmptyPreparedData:
    """After SFT's preparation, say how many rows each split lost and refuse one that has no row left, before any
    training.

    SFT drops the rows that truncation to ``max_length`` leaves without a scored token (a prompt that fills it)
    without a word; when that is every row, ``Trainer`` would only fail at ``train()`` with torch's "num_samples=0".
    The count is logged per split and kept in ``dropped_rows`` (not for packed or streamed data, whose rows are not
    counted).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = _named_splits(kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        super().__init__(*args, **kwargs)
        self.dropped_rows: dict[str, int] = {}
        for where, dataset in _named_splits(self.train_dataset, self.eval_dataset).items():
            if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
                raise ValueError(
                    f"{where} has no usable rows after preparation: every row lost its scored tokens (empty "
                    f"completion, or a prompt at least `max_length`={self.args.max_length} tokens long, so the "
                    "completion was truncated away). Raise `max_length` or shorten the prompts."
                )
            before = given.get(where)
            packed = getattr(self.args, "packing", False)  # configs without SFT's `packing` never pack
            if packed or not (hasattr(before, "__len__") and hasattr(dataset, "__len__")):
                continue
            self.dropped_rows[where] = len(before) - len(dataset)
            if self.dropped_rows[where] > 0:
                logger.warning(
                    "%s: %d of %d rows dropped in preparation: truncated to `max_length`=%s they kept no scored "
                    "token (a prompt at least that long, or an empty completion). Raise `max_length` or shorten "
                    "the prompts.",
                    where,
                    self.dropped_rows[where],
                    len(before),
                    self.args.max_length,
                )


def _named_splits(train_dataset: Any, eval_dataset: Any) -> dict[str, Any]:
    evals = eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}
    named = {f"eval_dataset[{k!r}]" if k else "eval_dataset": v for k, v in evals.items()}
    return {"train_dataset": train_dataset, **named}


class LossOnlyEvaluation:
    """Evaluation runs ``compute_loss`` only: these objectives log their own metrics and have no logits to return, so
    a ``compute_metrics`` would never be called; it is refused before anything is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("compute_metrics") is not None:
            raise ValueError(
                f"{type(self).__name__} evaluates its loss and logs its own metrics (no logits are returned), so "
                "`compute_metrics` would never be called. Remove it; its metrics appear as `eval_<method>/...`."
            )
        super().__init__(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return super().prediction_step(model, inputs, True, ignore_keys)  # the loss only, whatever was asked
