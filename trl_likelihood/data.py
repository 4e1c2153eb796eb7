"""Loading training data the way TRL users expect, and rejecting bad data before any training starts.

``load_training_dataset`` accepts a Hub id, a local json/jsonl/parquet/csv/txt file or folder, or a ``Dataset``; it
always goes through ``datasets.load_dataset`` for names and paths. ``validate_sft_dataset`` checks the columns and
value types that ``SFTTrainer`` will consume and names the column, row and expectation when something is off; string
columns are checked in Arrow, so a large corpus costs no Python copy.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from .paths import is_local_path, looks_local

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def _data_file_ext(path: str) -> str:
    """``.jsonl`` for ``train.jsonl`` and ``train.jsonl.gz``; ``datasets`` decompresses on its own."""
    root, ext = os.path.splitext(path)
    if ext.lower() in _COMPRESSIONS:
        ext = os.path.splitext(root)[1]
    return ext.lower()


def _looks_local(name_or_path: str) -> bool:
    """A path meant to be on this machine (``paths.looks_local``), or a data file name: a Hub dataset id has no data
    suffix."""
    return looks_local(name_or_path) or _data_file_ext(name_or_path) in _FILE_BUILDERS


def hub_dataset_id(name_or_path: Any) -> str | None:
    """``name_or_path`` if it names a Hub dataset, ``None`` for local paths and objects: only Hub ids go on a card."""
    if not isinstance(name_or_path, str) or not name_or_path:
        return None
    return None if is_local_path(name_or_path) or _data_file_ext(name_or_path) in _FILE_BUILDERS else name_or_path


def load_training_dataset(
    name_or_path: str | Dataset | DatasetDict, config: str | None = None, streaming: bool = False
) -> DatasetDict | IterableDatasetDict:
    """Load a Hub dataset id, a local data file, or a local folder, through ``datasets.load_dataset``.

    A local file gets the ``json``/``parquet``/``csv``/``text`` builder from its suffix (``.jsonl.gz`` too) and a
    ``train`` split; a folder written by ``save_to_disk`` goes through ``load_from_disk``. A path that looks local but
    does not exist raises ``FileNotFoundError`` here, rather than ``datasets`` trying the Hub with it and failing with
    a connection error. A ``Dataset`` comes back as the ``train`` split of a ``DatasetDict``.
    """
    if isinstance(name_or_path, DatasetDict | IterableDatasetDict):
        return name_or_path
    if isinstance(name_or_path, Dataset):
        return DatasetDict({"train": name_or_path})
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(path):
        ext = _data_file_ext(path)
        if ext not in _FILE_BUILDERS:
            raise ValueError(
                f"Unsupported data file {name_or_path!r}: expected one of {sorted(_FILE_BUILDERS)} (or a Hub id)."
            )
        return load_dataset(_FILE_BUILDERS[ext], data_files=path, streaming=streaming)
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
            return _load_saved(path, streaming)  # load_dataset refuses a save_to_disk folder
        return load_dataset(path, name=config, streaming=streaming)
    if _looks_local(name_or_path):
        raise FileNotFoundError(
            f"Dataset {name_or_path!r} does not exist (resolved to {os.path.abspath(path)!r}); expected a local "
            f"{'/'.join(e[1:] for e in _FILE_BUILDERS)} file or folder, or a Hub dataset id like 'trl-lib/Capybara'."
        )
    return load_dataset(name_or_path, name=config, streaming=streaming)


def _load_saved(path: str, streaming: bool) -> DatasetDict | IterableDatasetDict:
    """A folder written by ``save_to_disk``: a ``DatasetDict`` as is, a single ``Dataset`` as its ``train`` split."""
    saved = load_from_disk(path)
    splits = saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})
    if streaming:
        return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in splits.items()})
    return splits


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _check_text(value: Any, column: str, row: int, where: str, messages: str) -> None:
    """``messages`` is "no" (a string), "may" (a string or messages) or "must" (messages: the ``messages`` column)."""
    if isinstance(value, str) and messages != "must":
        return
    if messages != "no" and isinstance(value, list) and not value:
        raise ValueError(
            f"{where}: column {column!r}, row {row}: an empty message list; expected at least one message."
        )
    if messages != "no" and _is_message_list(value):
        for turn, message in enumerate(value):
            _check_content(message["content"], f"{where}: column {column!r}, row {row}, message {turn}")
        return
    expected = {
        "no": "a string",
        "may": "a string or a list of {'role', 'content'} messages",
        "must": "a list of {'role', 'content'} messages",
    }[messages]
    raise ValueError(
        f"{where}: column {column!r}, row {row}: expected {expected}, got {type(value).__name__} {value!r:.60}."
    )


def _check_content(content: Any, where: str) -> None:
    """A string, or TRL's content parts: ``[{"type": "text", "text": ...}, {"type": "image"}, ...]``."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise ValueError(f"{where}: expected a string 'content', got {type(content).__name__} {content!r:.60}.")
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ValueError(f"{where}, content part {index}: expected a {{'type': ...}} dict, got {part!r:.60}.")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise ValueError(f"{where}, content part {index}: a text part needs a string 'text', got {part!r:.60}.")


def _first_null_string_row(dataset: Dataset, column: str) -> int | None:
    """Check a string column in Arrow, so a million-row corpus is not copied into Python; ``-1`` if not strings."""
    values = dataset.with_format("arrow")[column]  # respects select/shuffle indices, unlike dataset.data
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return -1
    return pc.index(pc.is_null(values), True).as_py() if values.null_count else None


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
    if isinstance(dataset, DatasetDict | IterableDatasetDict):
        raise ValueError(f"{where}: got a DatasetDict with splits {list(dataset)}; pass one split, e.g. ds['train'].")
    if not isinstance(dataset, Dataset | IterableDataset):
        return  # torch datasets and custom collators: the user owns the format
    if (getattr(args, "dataset_kwargs", None) or {}).get("skip_prepare_dataset"):
        return
    head, columns = _head_and_columns(dataset, where)
    if "input_ids" in columns:
        return
    try:
        kind, needed = _detect_format(columns, getattr(args, "dataset_text_field", "text"))
    except ValueError as err:
        raise ValueError(f"{where} {err}.") from None
    for column in needed:
        messages = "must" if column == "messages" else "no" if kind == "language-modeling" else "may"
        _check_column(dataset, head, column, where, messages)
    if kind == "prompt-completion":
        _check_same_kind(dataset, head, where)


def _check_same_kind(dataset: Dataset | IterableDataset, head: list[dict] | None, where: str) -> None:
    """Prompt and completion both text or both messages: TRL fails with a bare ``TypeError`` on a mix.

    In a ``Dataset`` a column has one Arrow type, so the mix is the same in every row and row 0 is reported.
    """
    if head is None:
        kinds = [tuple(_is_list_feature(dataset.features[c]) for c in ("prompt", "completion"))]
    else:
        kinds = [(isinstance(r.get("prompt"), list), isinstance(r.get("completion"), list)) for r in head]
    for row, (prompt_is_messages, completion_is_messages) in enumerate(kinds):
        if prompt_is_messages != completion_is_messages:
            raise kind_mismatch_error(where, "completion", row, prompt_is_messages)


def kind_mismatch_error(where: str, column: str, row: int, prompt_is_messages: bool) -> ValueError:
    """The error for a response whose kind (text or messages) differs from its prompt's: TRL's own is a bare
    ``TypeError``."""
    expected, got = ("messages", "text") if prompt_is_messages else ("text", "messages")
    return ValueError(
        f"{where}: column {column!r}, row {row}: expected {expected} like column 'prompt', got {got}; a prompt and "
        "its responses must be both strings (standard) or both message lists (conversational)."
    )


def _is_list_feature(feature: Any) -> bool:
    return isinstance(feature, list) or type(feature).__name__ in ("List", "LargeList", "Sequence")


def _head_and_columns(dataset: Dataset | IterableDataset, where: str) -> tuple[list[dict] | None, list[str]]:
    """The first rows of an ``IterableDataset`` (it cannot be scanned) or ``None``, and the column names."""
    if isinstance(dataset, IterableDataset):
        head = list(itertools.islice(dataset, 64))
        if not head:
            raise ValueError(f"{where} is empty: it yielded no rows to train on.")
        return head, list(dataset.column_names or head[0])  # streamed json may not know its columns up front
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty: it has no rows to train on.")
    return None, list(dataset.column_names or [])


def _check_column(dataset: Any, head: list[dict] | None, column: str, where: str, messages: str) -> None:
    if head is None and messages != "must":
        row = _first_null_string_row(dataset, column)
        if row is None:
            return  # a string column without nulls: nothing can be wrong in it
        if row >= 0:
            raise ValueError(f"{where}: column {column!r}, row {row} is missing (None); expected text.")
    values = dataset[column] if head is None else [r.get(column) for r in head]
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"{where}: column {column!r}, row {row} is missing (None); expected text.")
        _check_text(value, column, row, where, messages)


def checked_sft_datasets(train_dataset: Any, eval_dataset: Any, args: Any, processing_class: Any = None) -> tuple:
    """``validate_sft_dataset`` on the train set and on each eval set (one dataset or a dict of them), and each in
    the form an SFT-style trainer consumes (``sft_ready``)."""
    train_dataset = sft_ready(train_dataset, args, processing_class, "train_dataset")
    if isinstance(eval_dataset, dict):
        names = {key: f"eval_dataset[{key!r}]" for key in eval_dataset}
        eval_dataset = {key: sft_ready(d, args, processing_class, names[key]) for key, d in eval_dataset.items()}
    else:
        eval_dataset = sft_ready(eval_dataset, args, processing_class, "eval_dataset")
    return train_dataset, eval_dataset


def sft_ready(dataset: Any, args: Any, processing_class: Any, where: str) -> Any:
    """``dataset`` validated, with message content given as text parts joined into strings (a text model's chat
    template would render the list's Python repr), and, streamed, every row checked as it is read (only the head can
    be checked before training)."""
    validate_sft_dataset(dataset, args, where)
    if not isinstance(dataset, Dataset | IterableDataset) or _passed_through(dataset, args):
        return dataset
    columns = _message_columns(dataset, args)
    if isinstance(dataset, IterableDataset):
        return dataset.map(_CheckRowJoinParts(args, processing_class, columns, where), with_indices=True)
    if any(_is_list_feature(dataset.features[c]) and _has_content_parts(dataset.features[c]) for c in columns):
        join = _CheckRowJoinParts(args, processing_class, columns, where, check=False)
        return dataset.map(join, with_indices=True, desc=f"Joining the text parts of {where}")
    return dataset


def _passed_through(dataset: Dataset | IterableDataset, args: Any) -> bool:
    """Tokenized data and ``skip_prepare_dataset``: the user owns the format (as in ``validate_sft_dataset``)."""
    columns = dataset.column_names or []
    return "input_ids" in columns or bool((getattr(args, "dataset_kwargs", None) or {}).get("skip_prepare_dataset"))


def _message_columns(dataset: Dataset | IterableDataset, args: Any) -> list[str]:
    columns = dataset.column_names or list(next(iter(dataset)))
    if "prompt" in columns and "completion" in columns:
        return ["prompt", "completion"]
    return ["messages"] if "messages" in columns else []


def _has_content_parts(feature: Any) -> bool:
    """A message list feature whose ``content`` is itself a list (of parts)."""
    inner = getattr(feature, "feature", feature[0] if isinstance(feature, list) and feature else None)
    content = inner.get("content") if isinstance(inner, dict) else None
    return content is not None and _is_list_feature(content)


class _CheckRowJoinParts:
    """What ``dataset.map`` does to each row: check it as ``validate_sft_dataset`` checks the head (a streamed row, as
    it is read; ``check=False`` skips this for a ``Dataset``, already checked whole), then join its messages' text
    parts. A class, so ``datasets`` can fingerprint it."""

    def __init__(self, args: Any, processing_class: Any, columns: list[str], where: str, check: bool = True) -> None:
        self.args, self.columns, self.where, self.check = args, columns, where, check
        self.text_only = processing_class is None or isinstance(processing_class, PreTrainedTokenizerBase)

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        if self.check:
            try:
                kind, needed = _detect_format(list(row), getattr(self.args, "dataset_text_field", "text"))
            except ValueError as err:
                raise ValueError(f"{self.where}: row {index} {err}.") from None
            for column in needed:
                value = row.get(column)
                if value is None:
                    raise ValueError(f"{self.where}: column {column!r}, row {index} is missing (None); expected text.")
                messages = "must" if column == "messages" else "no" if kind == "language-modeling" else "may"
                _check_text(value, column, index, self.where, messages)
        return {c: self._joined(row[c], c, index) for c in self.columns if isinstance(row.get(c), list)}

    def _joined(self, messages: list[dict[str, Any]], column: str, index: int) -> list[dict[str, Any]]:
        out = []
        for turn, message in enumerate(messages):
            content = message["content"]
            if isinstance(content, list):
                other = [part["type"] for part in content if part["type"] != "text"]
                if other and self.text_only:
                    raise ValueError(
                        f"{self.where}: column {column!r}, row {index}, message {turn}: a {other[0]!r} content part, "
                        "but the processing class is a text-only tokenizer; give the text, or a processor for it."
                    )
                if not other:
                    content = "".join(part["text"] for part in content)
            out.append({**message, "content": content})
        return out
