"""Hostile and malformed data, every trainer: each generated dataset either trains or is refused before training with
an error that names the offending column and row.

Hypothesis builds a small valid dataset in one of the trainer's formats (``Case.formats``), then applies one
corruption whose expected outcome is known: a missing column (the error names it), an extra column, empty strings,
unicode, a huge row (all fine), a ``None`` or a wrongly typed column, a message without content, a bad label, a
conversational prompt with a plain-text completion (the error names column and row). Arrow keeps one type per
column, so a wrong type is a whole column (reported at row 0) and ``None`` a single row. Most examples run only the
check the trainer runs first (``Case.validate``); a few build the trainer and train one step.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import CASES

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
UNICODE = ["ünïcödé", "日本語のテキスト", "שלום עולם", "emoji 🤖🔥", "zero\u200bwidth", "tab\tand\nnewline"]
HUGE = "the model learns " * 3000  # ~50k characters


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _valid(fmt: str, texts: list[str]) -> dict[str, list[Any]]:
    """A valid dataset of ``len(texts)`` rows (an even number) in format ``fmt``."""
    n = len(texts)
    if fmt == "text":
        return {"text": texts}
    if fmt == "prompt_completion":
        return {"prompt": texts, "completion": [" " + t for t in reversed(texts)]}
    if fmt == "messages":
        return {"messages": [[_message("user", t), _message("assistant", " " + t)] for t in texts]}
    if fmt == "prm_unpaired":
        return {"prompt": texts, "completion": [" " + t for t in texts], "label": [i % 2 == 0 for i in range(n)]}
    if fmt == "prm_grouped":
        return {"prompt": texts, "completions": [[" a", " " + t] for t in texts], "labels": [[1, 0] for _ in texts]}
    assert fmt == "prm_paired"
    return {"prompt": texts, "chosen": [" " + t for t in texts], "rejected": [" no " + t for t in texts]}


# Per format: the text columns (whole strings) and the column that holds each row's response.
TEXT_COLUMNS = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": (),
    "prm_unpaired": ("prompt", "completion"),
    "prm_grouped": ("prompt",),
    "prm_paired": ("prompt", "chosen", "rejected"),
}
RESPONSE = {"prompt_completion": "completion", "prm_unpaired": "completion", "prm_paired": "chosen"}
Expected = tuple[str, int | None] | None  # (column, row) named by the error; row None: a missing column


def _kinds(fmt: str) -> list[str]:
    """The corruptions that apply to a format."""
    kinds = ["missing", "extra", "unicode", "huge", "empty", "none", "wrong_type"]
    kinds += ["no_content"] if fmt == "messages" else []
    kinds += ["bad_label"] if fmt in ("prm_unpaired", "prm_grouped") else []
    return kinds + (["mixed"] if fmt in RESPONSE else [])


def _corrupt(data: st.DataObject, fmt: str, columns: dict[str, list[Any]], kind: str) -> Expected:
    """Apply corruption ``kind`` in place; return what the error must name, or ``None`` if the data stays valid."""
    n = len(next(iter(columns.values())))
    row = data.draw(st.integers(0, n - 1), label="row")
    text_column = data.draw(st.sampled_from(TEXT_COLUMNS[fmt] or ("messages",)), label="column")
    if kind == "missing":
        dropped = data.draw(st.sampled_from(sorted(columns)), label="dropped")
        del columns[dropped]
        if not columns:  # a dataset without columns has no rows either
            columns["id"] = list(range(n))
        return dropped, None
    if kind == "extra":
        columns[data.draw(st.sampled_from(["id", "score", "meta", "input"]))] = [{"k": i} for i in range(n)]
        return None
    if kind in ("unicode", "huge", "empty") and fmt != "messages":
        value = {"unicode": data.draw(st.sampled_from(UNICODE)), "huge": HUGE, "empty": ""}[kind]
        columns[text_column][row] = value
        # An empty response cannot carry an outcome label (implicit PRM); an empty text/prompt/completion is fine.
        return (text_column, row) if kind == "empty" and fmt.startswith("prm") and text_column != "prompt" else None
    if kind in ("unicode", "huge", "empty"):
        columns["messages"][row][1]["content"] = {"unicode": UNICODE[0], "huge": HUGE, "empty": ""}[kind]
        return None
    if kind == "none":
        columns[text_column][row] = None
        return text_column, row
    if kind == "wrong_type":
        columns[text_column] = data.draw(st.sampled_from([[7] * n, [0.5] * n, [{"x": 1}] * n]), label="values")
        return text_column, 0
    if kind == "no_content":
        del columns["messages"][row][1]["content"]  # Arrow fills the missing key with None
        return "messages", row
    if kind == "bad_label":
        label = "label" if fmt == "prm_unpaired" else "labels"
        bad = data.draw(st.sampled_from([2, -1, 0.5, None]), label="bad label")
        if fmt == "prm_unpaired":
            columns[label] = [int(v) for v in columns[label]]
            columns[label][row] = bad
        else:
            columns[label][row] = [1, bad]
        return label, row
    assert kind == "mixed"
    columns["prompt"] = [[_message("user", p)] for p in columns["prompt"]]
    return RESPONSE[fmt], 0


def _assert_names(err: Exception, expected: tuple[str, int | None]) -> None:
    column, row = expected
    message = str(err)
    if row is None:
        assert f"'{column}'" in message, message
    else:
        assert re.search(rf"column '{column}', row {row}\b", message), message


def _dataset(data: st.DataObject, case_name: str, kind: str | None = None) -> tuple[Dataset, Expected]:
    """A generated dataset for the trainer, corrupted by ``kind`` (drawn when ``None``), and the expected error."""
    formats = [f for f in CASES[case_name].formats if kind is None or kind in _kinds(f)]
    fmt = data.draw(st.sampled_from(formats), label="format")
    kind = kind or data.draw(st.sampled_from(_kinds(fmt)), label="corruption")
    texts = data.draw(st.lists(TEXT, min_size=2, max_size=4).map(lambda t: t * 2), label="texts")  # even: labels
    columns = _valid(fmt, texts)
    expected = _corrupt(data, fmt, columns, kind)
    return Dataset.from_dict(columns), expected


KIND_CASES = [(n, k) for n, c in CASES.items() for k in dict.fromkeys(k for f in c.formats for k in _kinds(f))]


@pytest.mark.parametrize(("name", "kind"), KIND_CASES)
@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validation_accepts_or_names_column_and_row(name, kind, tmp_path, data):
    case = CASES[name]
    dataset, expected = _dataset(data, name, kind)
    args = case.args(tmp_path)
    if expected is None:
        case.validate(dataset, args)
        return
    with pytest.raises(ValueError) as err:
        case.validate(dataset, args)
    _assert_names(err.value, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
@settings(max_examples=4, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_trains_one_step_or_fails_before_training(name, tiny_model_dir, tmp_path_factory, data):
    case = CASES[name]
    dataset, expected = _dataset(data, name)
    args = case.args(tmp_path_factory.mktemp(name), max_steps=1, per_device_train_batch_size=4, max_length=32)
    if expected is not None:
        with pytest.raises(ValueError) as err:
            case.trainer(tiny_model_dir, args, dataset)
        _assert_names(err.value, expected)
        return
    trainer = case.trainer(tiny_model_dir, args, dataset)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("name", list(CASES))
def test_all_kinds_of_odd_but_valid_rows_train_together(name, tiny_model_dir, tmp_path):
    """Unicode, empty prompts, a huge row and an unused column in one dataset: one step, nothing refused."""
    case = CASES[name]
    fmt = case.formats[0] if case.formats[0] != "text" else "prompt_completion"
    columns = _valid(fmt, [*UNICODE[:3], "", HUGE, "plain words"])
    columns["meta"] = [{"source": i} for i in range(6)]
    trainer = case.trainer(tiny_model_dir, case.args(tmp_path, max_steps=1, max_length=32), Dataset.from_dict(columns))
    trainer.train()
    assert trainer.state.global_step == 1
