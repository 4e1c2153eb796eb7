"""Outcome-labelled data for the implicit PRM, in TRL's formats, checked and reshaped before training.

Accepted inputs (standard or conversational):
- unpaired ``prompt, completion, label`` (TRL's unpaired preference format, as ``KTOTrainer`` takes);
- grouped ``prompt, completions, labels`` (lists; e.g. rollouts with a verifier's verdicts), expanded to unpaired;
- paired ``prompt, chosen, rejected`` (TRL's preference format);
- stepwise ``prompt, completions, labels`` (TRL's stepwise-supervision format: the steps of one response, a label per
  step), with ``stepwise=True``: one response, the steps joined by ``step_separator``, correct when every step is.

Grouped and stepwise data have the same columns, so with ``completions`` and ``labels`` the config must say which it
is (``stepwise``); reading one as the other would train silently wrong.

``"ce"`` trains on unpaired rows (a pair gives a correct and an incorrect row). ``"dpo"`` trains on pairs: every
correct x incorrect combination of responses to the same prompt (ALGORITHMS.md 4(a), official ``train_dpo.py``).
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset

from .data import kind_mismatch_error
from .stepwise_data import check_stepwise_row, joined_response, outcome_label

LABEL_COLUMN = "prm_label"


def _label(value: Any, column: str, row: int, where: str) -> int:
    if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
        return int(value)
    raise ValueError(f"{where}: column {column!r}, row {row}: expected a boolean or 0/1 label, got {value!r}.")


def _response(value: Any, column: str, row: int, where: str) -> Any:
    empty = value is None or (isinstance(value, str | list) and len(value) == 0)
    if empty:
        raise ValueError(f"{where}: column {column!r}, row {row}: the prompt has no completion (empty or missing).")
    if not isinstance(value, str | list):
        raise ValueError(
            f"{where}: column {column!r}, row {row}: expected text or messages, got {type(value).__name__}."
        )
    return value


def _response_like(prompt: Any, value: Any, column: str, row: int, where: str) -> Any:
    """A non-empty response of the prompt's kind: TRL fails with a bare ``TypeError`` on text mixed with messages."""
    value = _response(value, column, row, where)
    if isinstance(prompt, list) != isinstance(value, list):
        raise kind_mismatch_error(where, column, row, isinstance(prompt, list))
    return value


def _prompt(value: Any, row: int, where: str) -> Any:
    if value is None or not isinstance(value, str | list):
        raise ValueError(f"{where}: column 'prompt', row {row}: expected text or messages, got {value!r:.60}.")
    return value


def _row(prompt: Any, completion: Any, label: int) -> dict[str, Any]:
    return {"prompt": prompt, "completion": completion, LABEL_COLUMN: label}


def _unpaired_rows(ex: dict, i: int, where: str) -> list[dict[str, Any]]:
    prompt = _prompt(ex["prompt"], i, where)
    completion = _response_like(prompt, ex["completion"], "completion", i, where)
    return [_row(prompt, completion, _label(ex["label"], "label", i, where))]


def _grouped_rows(ex: dict, i: int, where: str) -> list[dict[str, Any]]:
    prompt, completions, labels = _prompt(ex["prompt"], i, where), ex["completions"], ex["labels"]
    if not isinstance(completions, list) or not completions:
        raise ValueError(f"{where}: column 'completions', row {i}: the prompt has no completion.")
    if not isinstance(labels, list) or len(labels) != len(completions):
        raise ValueError(f"{where}: column 'labels', row {i}: expected a list as long as 'completions'.")
    return [
        _row(prompt, _response_like(prompt, c, "completions", i, where), _label(lab, "labels", i, where))
        for c, lab in zip(completions, labels)
    ]


def _pair(ex: dict, i: int, where: str) -> dict[str, Any]:
    prompt = _prompt(ex["prompt"], i, where)
    return {
        "prompt": prompt,
        **{side: _response_like(prompt, ex[side], side, i, where) for side in ("chosen", "rejected")},
    }


def _paired_rows(ex: dict, i: int, where: str) -> list[dict[str, Any]]:
    pair = _pair(ex, i, where)
    return [_row(pair["prompt"], pair["chosen"], 1), _row(pair["prompt"], pair["rejected"], 0)]


def _stepwise_rows(ex: dict, i: int, where: str, step_separator: str) -> list[dict[str, Any]]:
    check_stepwise_row(ex, i, where)
    return [
        _row(
            ex["prompt"], joined_response(ex["prompt"], ex["completions"], step_separator), outcome_label(ex["labels"])
        )
    ]


def _columns(dataset: Dataset, where: str) -> set[str]:
    """The column names of a non-empty ``Dataset`` with a ``prompt`` column."""
    if not isinstance(dataset, Dataset):
        raise ValueError(f"{where}: expected a datasets.Dataset, got {type(dataset).__name__}.")
    columns = set(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty: it has no rows to train on.")
    if "prompt" not in columns:
        raise ValueError(f"{where} has columns {sorted(columns)}; expected a 'prompt' column.")
    return columns


def to_unpaired(
    dataset: Dataset, where: str = "train_dataset", stepwise: bool | None = False, step_separator: str = "\n\n"
) -> list[dict[str, Any]]:
    """Rows ``{prompt, completion, prm_label}`` from any accepted format, validated row by row."""
    columns = _columns(dataset, where)
    if {"completion", "label"} <= columns:
        return [row for i, ex in enumerate(dataset) for row in _unpaired_rows(ex, i, where)]
    if {"completions", "labels"} <= columns:
        if stepwise is None:
            raise ValueError(
                f"{where} has 'completions' and 'labels': TRL's stepwise-supervision format (the steps of one "
                "response, a label per step) or a group of responses with an outcome label each. Set "
                "`stepwise=True` (steps) or `stepwise=False` (responses)."
            )
        if stepwise:
            return [row for i, ex in enumerate(dataset) for row in _stepwise_rows(ex, i, where, step_separator)]
        return [row for i, ex in enumerate(dataset) for row in _grouped_rows(ex, i, where)]
    if {"chosen", "rejected"} <= columns:
        return [row for i, ex in enumerate(dataset) for row in _paired_rows(ex, i, where)]
    raise ValueError(
        f"{where} has columns {sorted(columns)}; expected 'prompt' with 'completion' and 'label', with "
        "'completions' and 'labels', or with 'chosen' and 'rejected'."
    )


def _key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def to_pairs(
    dataset: Dataset, where: str = "train_dataset", stepwise: bool | None = False, step_separator: str = "\n\n"
) -> list[dict[str, Any]]:
    """Rows ``{prompt, chosen, rejected}``: given pairs as they are, else every correct x incorrect per prompt."""
    if {"chosen", "rejected"} <= _columns(dataset, where):
        return [_pair(ex, i, where) for i, ex in enumerate(dataset)]
    groups: dict[str, dict[str, list]] = {}
    for row in to_unpaired(dataset, where, stepwise, step_separator):
        group = groups.setdefault(_key(row["prompt"]), {"prompt": row["prompt"], "pos": [], "neg": []})
        group["pos" if row[LABEL_COLUMN] else "neg"].append(row["completion"])
    pairs = [
        {"prompt": g["prompt"], "chosen": pos, "rejected": neg}
        for g in groups.values()
        for pos in g["pos"]
        for neg in g["neg"]
    ]
    if not pairs:
        raise ValueError(
            f"{where}: loss_type='dpo' needs at least one prompt with both a correct and an incorrect response; none "
            f"of the {len(groups)} prompts has both. Use loss_type='ce' for this data."
        )
    return pairs


def prepare_prm_dataset(dataset: Dataset | None, args: Any, where: str) -> Dataset | None:
    """The dataset the trainer feeds to SFT's tokenisation: prompt-completion rows (plus ``rejected`` for pairs).
    ``args``: the ``ImplicitPRMConfig`` (``loss_type``, ``stepwise``, ``step_separator``)."""
    if dataset is None:
        return None
    layout = (where, args.stepwise, args.step_separator)
    if args.loss_type == "ce":
        return Dataset.from_list(to_unpaired(dataset, *layout))
    # SFT's preprocessing sees a prompt-completion dataset (the chosen side); the trainer tokenises `rejected` too.
    pairs = to_pairs(dataset, *layout)
    return Dataset.from_list(
        [{"prompt": p["prompt"], "completion": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    )
