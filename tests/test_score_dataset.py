"""``trl-likelihood score``: every row's candidates scored as ``ImplicitPRM`` scores them, in input order, resumable
after an interruption, the same across 2 processes as in one, and bad rows named before anything is scored."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from datasets import Dataset

from tests.tiny import build_tiny_model
from trl_likelihood import ImplicitPRM
from trl_likelihood.score_dataset import done_indices, score_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
ROWS = [
    {
        "prompt": f"{a}+{b} =",
        "completions": [[f"{a}+{b}", f"= {a + b}"], [f"{a} plus {b}", f"is {a + b + 1}"], [f"answer {a * b}"]],
        "answers": [str(a + b), str(a + b + 1), str(a * b)],
    }
    for a, b in [(1, 2), (3, 4), (5, 6), (2, 2), (7, 1)]
]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> str:
    """The tiny model with other weights (same tokenizer), so every reward is non-zero."""
    return build_tiny_model(str(tmp_path_factory.mktemp("reference")), seed=1)


@pytest.fixture(scope="module")
def prm(tiny_model_dir, reference_dir) -> ImplicitPRM:
    return ImplicitPRM(tiny_model_dir, reference=reference_dir, beta=0.5, batch_size=2)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_rows_are_scored_as_the_scorer_scores_them(prm, tmp_path):
    out = str(tmp_path / "scores.jsonl")
    assert score_dataset(prm, Dataset.from_list(ROWS), out, chunk_size=2, progress=False) == len(ROWS)
    written = _read(out)
    assert [r["index"] for r in written] == list(range(len(ROWS)))
    for row, got in zip(ROWS, written):
        steps = row["completions"]
        expected = prm.score(row["prompt"], steps)  # one row at a time, in input order: other batches
        for mine, theirs in zip(got["step_rewards"], expected):
            assert mine == pytest.approx(theirs.step_rewards, abs=1e-5)
        assert got["best"] == prm.best_of_n(row["prompt"], steps)[0]
        assert got["vote"] == prm.weighted_majority_vote(row["prompt"], steps, row["answers"])[0]
    assert len({s for r in written for s in r["scores"]}) > 1  # non-zero, distinct rewards: ranking is tested
    # candidates given as strings are split into steps on the scorer's step_separator
    texts = [{**r, "completions": ["\n\n".join(c) for c in r["completions"]]} for r in ROWS]
    out_texts = str(tmp_path / "texts.jsonl")
    score_dataset(prm, Dataset.from_list(texts), out_texts, chunk_size=2, progress=False)
    assert _read(out_texts) == written


def test_an_interrupted_run_resumes_where_it_stopped(prm, tmp_path, monkeypatch):
    full, out = str(tmp_path / "full.jsonl"), str(tmp_path / "resumed.jsonl")
    score_dataset(prm, Dataset.from_list(ROWS), full, chunk_size=2, progress=False)
    calls = []
    real = prm.score

    def fails_on_the_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prm, "score", fails_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        score_dataset(prm, Dataset.from_list(ROWS), out, chunk_size=2, progress=False)
    assert done_indices(out) == {0, 1}
    monkeypatch.setattr(prm, "score", real)
    assert score_dataset(prm, Dataset.from_list(ROWS), out, chunk_size=2, progress=False) == 3  # rows 2, 3, 4
    assert _read(out) == _read(full)


def test_parquet_output(prm, tmp_path):
    import pyarrow.parquet as pq

    out = str(tmp_path / "scores.parquet")
    score_dataset(prm, Dataset.from_list(ROWS[:3]), out, progress=False)
    score_dataset(prm, Dataset.from_list(ROWS), out, progress=False)  # resumed: rows 3 and 4 added
    table = pq.read_table(out).to_pylist()
    assert [r["index"] for r in table] == list(range(len(ROWS)))
    jsonl = str(tmp_path / "scores.jsonl")
    score_dataset(prm, Dataset.from_list(ROWS), jsonl, progress=False)
    assert [r["best"] for r in table] == [r["best"] for r in _read(jsonl)]


def test_a_bad_row_is_named_before_anything_is_written(prm, tmp_path):
    rows = [*ROWS[:3], {**ROWS[3], "answers": ["1"]}]
    out = tmp_path / "scores.jsonl"
    with pytest.raises(ValueError, match=r"column 'answers', row 3: expected one answer per candidate \(3\)"):
        score_dataset(prm, Dataset.from_list(rows), str(out), progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tiny_model_dir, reference_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    flags = ["--model", tiny_model_dir, "--reference", reference_dir, "--beta", "0.5", "--dataset_name", str(data)]
    flags += ["--chunk_size", "3", "--batch_size", "2", "--no_progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    outputs = {}
    for name, command in {
        "one": [sys.executable, "-m", "trl_likelihood.entry"],
        "two": [*launch, "-m", "trl_likelihood.entry"],
    }.items():
        outputs[name] = str(tmp_path / f"{name}.jsonl")
        cmd = [*command, "score", *flags, "--output", outputs[name]]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one, two = _read(outputs["one"]), _read(outputs["two"])
    assert [r["index"] for r in two] == list(range(len(ROWS)))
    for a, b in zip(one, two):
        assert a["best"] == b["best"] and a["vote"] == b["vote"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
