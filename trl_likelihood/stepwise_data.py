"""TRL's stepwise-supervision format, checked row by row with named errors: ``prompt`` (text or chat messages),
``completions`` (the steps of one response, strings) and ``labels`` (one bool per step: is the step correct).

This is the data of process reward models (TRL's former ``PRMTrainer``; Math-Shepherd, PRM800K). The step-level
evaluation reads it as it is; the implicit PRM, which learns from outcome labels, reads each row as one response
(the steps joined by ``step_separator``) whose outcome label is whether every step is correct.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

STEPWISE_COLUMNS = ("prompt", "completions", "labels")


def _is_label(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1))


def check_stepwise_row(row: dict[str, Any], index: int, where: str) -> None:
    """Raise ``ValueError`` naming the column, row (and step) of the first thing wrong in ``row``."""
    prompt, steps, labels = row.get("prompt"), row.get("completions"), row.get("labels")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise ValueError(f"{where}: column 'prompt', row {index}: expected text or a non-empty message list.")
    elif not isinstance(prompt, str):
        raise ValueError(f"{where}: column 'prompt', row {index}: expected text or messages, got {prompt!r:.60}.")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{where}: column 'completions', row {index}: expected a non-empty list of steps (strings).")
    for step, text in enumerate(steps):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"{where}: column 'completions', row {index}, step {step}: expected a non-empty string, got "
                f"{text!r:.60}."
            )
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise ValueError(
            f"{where}: column 'labels', row {index}: expected one label per step ({len(steps)}), got {labels!r:.60}."
        )
    for step, label in enumerate(labels):
        if not _is_label(label):
            raise ValueError(
                f"{where}: column 'labels', row {index}, step {step}: expected a boolean or 0/1, got {label!r}."
            )


def validate_stepwise_dataset(dataset: Iterable[dict[str, Any]], where: str = "dataset") -> None:
    """Every row of a stepwise-supervision dataset (a ``datasets.Dataset`` or a list of dicts), checked."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None and not set(STEPWISE_COLUMNS) <= set(columns):
        raise ValueError(f"{where} has columns {sorted(columns)}; expected {list(STEPWISE_COLUMNS)} (stepwise).")
    count = 0
    for index, row in enumerate(dataset):
        check_stepwise_row(row, index, where)
        count += 1
    if count == 0:
        raise ValueError(f"{where} is empty: it has no rows.")


def joined_response(prompt: Any, steps: list[str], step_separator: str) -> Any:
    """The response the steps make, as ``ImplicitPRM.score`` joins them; an assistant message for a chat prompt."""
    text = step_separator.join(steps)
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def outcome_label(labels: list[Any]) -> int:
    """A response is correct when every one of its steps is."""
    return int(all(bool(label) for label in labels))
