"""Data loading (local files, folders, Hub ids, offline) and the errors bad data raises before any training."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset

from tests.conftest import cpu_args
from trl_likelihood import MixCEConfig, MixCETrainer, data
from trl_likelihood.data import hub_dataset_id, load_training_dataset, validate_sft_dataset

ROWS = [{"text": f"row {i} the cat runs."} for i in range(5)]


def _write(path, fmt: str, rows: list[dict] = ROWS) -> str:
    """Write ``rows`` as ``fmt`` with the writers users have (json.dumps, datasets' to_* methods)."""
    path = str(path)
    if fmt == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "json":
        with open(path, "w") as f:
            json.dump(rows, f)  # a top-level array, not lines
    elif fmt == "txt":
        with open(path, "w") as f:
            f.writelines(r["text"] + "\n" for r in rows)
    else:
        getattr(Dataset.from_list(rows), f"to_{fmt}")(path)
    return path


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything reaches ``datasets.load_dataset`` with a name rather than a builder or folder."""
    real = data.load_dataset

    def guarded(path, *args, **kwargs):
        if not (path in {"json", "csv", "parquet", "text"} or os.path.isdir(path)):
            raise AssertionError(f"load_dataset was asked for the Hub name {path!r}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "load_dataset", guarded)


# --- load_training_dataset -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "txt", "jsonl.gz"])
def test_load_local_file(tmp_path, fmt, no_hub):
    path = _write(tmp_path / f"train.{fmt}", fmt)
    loaded = load_training_dataset(path)
    assert isinstance(loaded, DatasetDict) and list(loaded) == ["train"]
    assert loaded["train"]["text"] == [r["text"] for r in ROWS]


def test_load_local_file_streaming(tmp_path, no_hub):
    loaded = load_training_dataset(_write(tmp_path / "train.jsonl", "jsonl"), streaming=True)
    assert isinstance(loaded["train"], IterableDataset)
    assert [r["text"] for r in loaded["train"]] == [r["text"] for r in ROWS]


def test_load_folder_of_splits(tmp_path, no_hub):
    """A folder goes through load_dataset's own file discovery, so train/test file names become splits."""
    _write(tmp_path / "train.jsonl", "jsonl")
    _write(tmp_path / "test.jsonl", "jsonl", ROWS[:2])
    loaded = load_training_dataset(str(tmp_path))
    assert sorted(loaded) == ["test", "train"]
    assert (loaded["train"].num_rows, loaded["test"].num_rows) == (5, 2)


@pytest.mark.parametrize("single", [True, False])
def test_load_save_to_disk_folder(tmp_path, single, no_hub):
    ds = Dataset.from_list(ROWS)
    (ds if single else DatasetDict({"train": ds, "test": ds.select([0])})).save_to_disk(str(tmp_path / "saved"))
    loaded = load_training_dataset(str(tmp_path / "saved"))
    assert sorted(loaded) == (["train"] if single else ["test", "train"])
    assert loaded["train"]["text"] == ds["text"]
    streamed = load_training_dataset(str(tmp_path / "saved"), streaming=True)
    assert isinstance(streamed, IterableDatasetDict) and len(list(streamed["train"])) == len(ROWS)


def test_load_expands_user(tmp_path, monkeypatch, no_hub):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / "train.jsonl", "jsonl")
    assert load_training_dataset("~/train.jsonl")["train"].num_rows == len(ROWS)


def test_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: calls.append((a, k)) or DatasetDict())
    load_training_dataset("trl-lib/Capybara", config="default", streaming=True)
    assert calls == [(("trl-lib/Capybara",), {"name": "default", "streaming": True})]


def test_hub_id_really_reaches_datasets_offline():
    """The unpatched path: datasets itself is asked, and says it is offline (no silent local fallback)."""
    with pytest.raises(ConnectionError, match="someone/some-dataset"):
        load_training_dataset("someone/some-dataset")


@pytest.mark.parametrize("name", ["data/missing.jsonl", "./missing", "/nonexistent/train.parquet", "~/nope.csv"])
def test_missing_local_path_is_not_sent_to_the_hub(name, no_hub):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_training_dataset(name)
    assert repr(name) in str(err.value) and "Hub dataset id" in str(err.value)


def test_unsupported_file_type(tmp_path, no_hub):
    (tmp_path / "train.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"Unsupported data file .*train\.xlsx.*\.jsonl"):
        load_training_dataset(str(tmp_path / "train.xlsx"))


def test_dataset_objects_pass_through():
    ds = Dataset.from_list(ROWS)
    assert load_training_dataset(ds)["train"] is ds
    splits = DatasetDict({"train": ds})
    assert load_training_dataset(splits) is splits


def test_hub_dataset_id(tmp_path):
    assert hub_dataset_id("trl-lib/Capybara") == "trl-lib/Capybara"
    assert hub_dataset_id("imdb") == "imdb"
    for local in ("data/train.jsonl", "./x", "/abs/path", str(tmp_path), "", None):
        assert hub_dataset_id(local) is None


# --- validate_sft_dataset --------------------------------------------------------------------------------------------

ARGS = MixCEConfig("unused", **cpu_args())


@pytest.mark.parametrize(
    "dataset_fixture", ["lm_dataset", "prompt_completion_dataset", "conversational_dataset"], ids=lambda s: s
)
def test_valid_formats_pass(request, dataset_fixture):
    dataset = request.getfixturevalue(dataset_fixture)
    validate_sft_dataset(dataset, ARGS)
    validate_sft_dataset(dataset.to_iterable_dataset(), ARGS)


def test_conversational_prompt_completion_passes():
    ds = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "hi"}]],
            "completion": [[{"role": "assistant", "content": "hello"}]],
        }
    )
    validate_sft_dataset(ds, ARGS)


def test_pretokenized_and_custom_text_field_pass():
    validate_sft_dataset(Dataset.from_dict({"input_ids": [[1, 2, 3]]}), ARGS)
    args = MixCEConfig("unused", dataset_text_field="body", **cpu_args())
    validate_sft_dataset(Dataset.from_dict({"body": ["a b c"]}), args)
    with pytest.raises(ValueError, match="expected a 'body' column"):
        validate_sft_dataset(Dataset.from_dict({"text": ["a b c"]}), args)


@pytest.mark.parametrize(
    "columns, match",
    [
        ({"foo": ["a"], "bar": ["b"]}, r"train_dataset has columns \['foo', 'bar'\]; expected a 'text' column"),
        ({"prompt": ["a"]}, r"train_dataset has a 'prompt' column but no 'completion' column"),
        ({"completion": ["a"]}, r"has columns \['completion'\].*'prompt' and 'completion' columns"),
    ],
)
def test_missing_columns(columns, match):
    with pytest.raises(ValueError, match=match):
        validate_sft_dataset(Dataset.from_dict(columns), ARGS)


def _no_rows():
    yield from ()


def test_empty_dataset():
    with pytest.raises(ValueError, match="train_dataset is empty"):
        validate_sft_dataset(Dataset.from_dict({"text": []}), ARGS)
    with pytest.raises(ValueError, match="eval_dataset is empty"):
        validate_sft_dataset(IterableDataset.from_generator(_no_rows), ARGS, "eval_dataset")


@pytest.mark.parametrize(
    "columns, match",
    [
        ({"text": [1, 2]}, r"column 'text', row 0: expected a string, got int 1"),
        ({"text": ["a", None, "c"]}, r"column 'text', row 1 is missing \(None\); expected text"),
        ({"prompt": ["p", "q"], "completion": ["c", None]}, r"column 'completion', row 1 is missing"),
        ({"prompt": [1.5], "completion": ["c"]}, r"column 'prompt', row 0: expected a string or a list .*got float"),
        ({"messages": ["hello"]}, r"column 'messages', row 0: expected a list of \{'role', 'content'\} messages"),
        ({"messages": [[{"role": "user", "content": "x"}], None]}, r"column 'messages', row 1 is missing"),
        (  # Arrow fills the missing key of the second message with None
            {"messages": [[{"role": "user", "content": "x"}, {"role": "assistant"}]]},
            r"column 'messages', row 0, message 1: expected a string 'content', got NoneType",
        ),
        ({"messages": [[{"text": "x"}]]}, r"column 'messages', row 0: expected a list of .*messages, got list"),
    ],
)
def test_wrong_types_name_column_and_row(columns, match):
    dataset = Dataset.from_dict(columns)
    with pytest.raises(ValueError, match=match):
        validate_sft_dataset(dataset, ARGS)
    with pytest.raises(ValueError, match=match):  # the streaming check reads the same rows
        validate_sft_dataset(dataset.to_iterable_dataset(), ARGS)


def test_missing_row_is_reported_in_the_view_the_user_holds():
    """After shuffle/select the row number must be the user's, not the one in the underlying Arrow table."""
    dataset = Dataset.from_dict({"text": [None, "a", "b", "c"]}).select([3, 2, 0, 1])
    with pytest.raises(ValueError, match="row 2 is missing"):
        validate_sft_dataset(dataset, ARGS)
    validate_sft_dataset(Dataset.from_dict({"text": [None, "a", "b"]}).select([1, 2]), ARGS)  # the None is not in it


def test_datasetdict_is_rejected_with_its_splits():
    splits = DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS)})
    with pytest.raises(ValueError, match=r"train_dataset: got a DatasetDict with splits \['train', 'test'\].*'train'"):
        validate_sft_dataset(splits, ARGS)
    with pytest.raises(ValueError, match="got a DatasetDict"):
        validate_sft_dataset(IterableDatasetDict({"train": Dataset.from_list(ROWS).to_iterable_dataset()}), ARGS)


def test_streamed_json_without_declared_columns(tmp_path):
    """Streaming json may not know its columns before reading; the check must read them from the first row."""
    streamed = load_dataset("json", data_files=_write(tmp_path / "t.jsonl", "jsonl"), streaming=True)["train"]
    validate_sft_dataset(streamed, ARGS)
    bad = load_dataset("json", data_files=_write(tmp_path / "b.jsonl", "jsonl", [{"body": "x"}]), streaming=True)
    with pytest.raises(ValueError, match=r"has columns \['body'\]"):
        validate_sft_dataset(bad["train"], ARGS)


# --- raised by the trainer, before the model is even loaded ----------------------------------------------------------


@pytest.mark.parametrize(
    "train, match",
    [
        (Dataset.from_dict({"prompt": ["a"]}), "'prompt' column but no 'completion'"),
        (Dataset.from_dict({"text": []}), "train_dataset is empty"),
        (Dataset.from_dict({"text": ["a", None]}), "column 'text', row 1 is missing"),
        (DatasetDict({"train": Dataset.from_list(ROWS)}), r"got a DatasetDict with splits \['train'\]"),
    ],
)
def test_trainer_rejects_bad_data_before_loading_the_model(tmp_path, train, match):
    """A Hub id that cannot be reached offline: if validation ran after loading, this would be an OSError instead."""
    args = MixCEConfig(str(tmp_path), **cpu_args())
    with pytest.raises(ValueError, match=match):
        MixCETrainer(model="nobody/no-such-model", args=args, train_dataset=train)


def test_trainer_names_the_bad_eval_split(tiny_model_dir, lm_dataset, tmp_path):
    args = MixCEConfig(str(tmp_path), eval_strategy="steps", eval_steps=1, **cpu_args())
    evals = {"good": lm_dataset, "bad": Dataset.from_dict({"text": [3]})}
    with pytest.raises(ValueError, match=r"eval_dataset\['bad'\]: column 'text', row 0: expected a string"):
        MixCETrainer(model=tiny_model_dir, args=args, train_dataset=lm_dataset, eval_dataset=evals)
    trainer = MixCETrainer(model=tiny_model_dir, args=args, train_dataset=lm_dataset, eval_dataset=lm_dataset)
    assert trainer.state.global_step == 0  # construction with good data works and nothing has trained


@pytest.mark.parametrize("name", ["org/name/sub", "C:\\data\\train", "~/train", "./train", "/abs/train"])
def test_a_dataset_path_follows_the_models_local_rule(name):
    """One rule for "local path or Hub id" (``paths.looks_local``): a name a model would take for a missing local
    path is one for a dataset too, named before ``datasets`` tries the Hub with it."""
    from trl_likelihood.data import hub_dataset_id, load_training_dataset
    from trl_likelihood.paths import looks_local

    assert looks_local(name) and hub_dataset_id(name) is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_training_dataset(name)
