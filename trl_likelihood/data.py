"""Loading training data the way TRL users expect, and rejecting bad data before any training starts.

``load_training_dataset`` accepts a Hub id, a local json/jsonl/parquet/csv file or folder, or a ``Dataset``; it always
goes through ``datasets.load_dataset`` for names and paths. ``validate_sft_dataset`` checks the columns and value
types that ``SFTTrainer`` will consume and names the column, row and expectation when something is off.
"""

from __future__ import annotations

import os
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_training_dataset(name_or_path: str, config: str | None = None, streaming: bool = False) -> DatasetDict:
    """Load a Hub dataset id, a local data file, or a local folder, through ``datasets.load_dataset``."""
    ext = os.path.splitext(name_or_path)[1].lower()
    if os.path.isfile(name_or_path):
        if ext not in _FILE_BUILDERS:
            raise ValueError(
                f"Unsupported data file {name_or_path!r}: expected one of {sorted(_FILE_BUILDERS)} (or a Hub id)."
            )
        return load_dataset(_FILE_BUILDERS[ext], data_files=name_or_path, streaming=streaming)
    return load_dataset(name_or_path, name=config, streaming=streaming)


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_text(value: Any, column: str, row: int, where: str, allow_messages: bool) -> None:
    if isinstance(value, str):
        return
    if allow_messages and _is_message_list(value):
        return
    expected = "a string or a list of {'role', 'content'} messages" if allow_messages else "a string"
    raise ValueError(f"{where}: column {column!r}, row {row}: expected {expected}, got {type(value).__name__} {value!r:.60}.")


def _detect_format(columns: list[str], text_field: str) -> tuple[str, list[str]]:
    if "prompt" in columns and "completion" in columns:
        return "prompt-completion", ["prompt", "completion"]
    if "messages" in columns:
        return "conversational", ["messages"]
    if text_field in columns:
        return "language-modeling", [text_field]
    if "prompt" in columns:
        raise ValueError("has a 'prompt' column but no 'completion' column")
    raise ValueError(
        f"has columns {columns}; expected a {text_field!r} column (language modeling), a 'messages' column "
        "(conversational), or 'prompt' and 'completion' columns"
    )


def validate_sft_dataset(dataset: Any, args: Any, where: str = "train_dataset") -> None:
    """Check a dataset that an SFT-style trainer will consume; raise ``ValueError`` naming the column and row.

    Already-tokenized datasets (an ``input_ids`` column) and ``skip_prepare_dataset`` are passed through untouched,
    as ``SFTTrainer`` does. ``IterableDataset`` is checked on its first rows only, since it cannot be scanned.
    """
    if dataset is None:
        return
    if isinstance(dataset, DatasetDict):
        raise ValueError(f"{where}: got a DatasetDict with splits {list(dataset)}; pass one split, e.g. ds['train'].")
    if not isinstance(dataset, Dataset | IterableDataset):
        return  # torch datasets and custom collators: the user owns the format
    if (getattr(args, "dataset_kwargs", None) or {}).get("skip_prepare_dataset"):
        return
    columns = list(dataset.column_names or [])
    if "input_ids" in columns:
        return
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"{where} is empty: it has no rows to train on.")
    try:
        kind, needed = _detect_format(columns, getattr(args, "dataset_text_field", "text"))
    except ValueError as err:
        raise ValueError(f"{where} {err}.") from None
    rows = dataset if isinstance(dataset, IterableDataset) else None
    for column in needed:
        values = [r[column] for _, r in zip(range(64), rows)] if rows is not None else dataset[column]
        for row, value in enumerate(values):
            if value is None:
                raise ValueError(f"{where}: column {column!r}, row {row} is missing (None); expected text.")
            _check_text(value, column, row, where, allow_messages=kind != "language-modeling")
