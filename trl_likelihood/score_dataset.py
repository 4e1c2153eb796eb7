"""Scoring a dataset of prompts with N candidate responses by a trained PRM, at scale and resumably.

Rows: ``prompt`` (text or messages), a column of N candidates (default ``completions``; each candidate a list of
steps, or a string split on the scorer's ``step_separator``) and optionally ``answers`` (one per candidate, for the
weighted vote). For each row the output holds its ``index`` in the input, every candidate's ``step_rewards`` and
``score``, ``best`` (best-of-N) and, with answers, ``vote`` (weighted majority vote).

Responses are scored in batches of similar length (less padding), the rows in chunks: under ``accelerate launch``
each process scores a shard of each chunk with its own copy of the PRM and the main process writes the chunk, in
input order, before the next one starts. Rows already in the output are skipped, so an interrupted run resumes
where it stopped (JSON Lines are appended chunk by chunk; Parquet is written once at the end).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from .prm_scorer import weighted_vote


def _steps(candidate: Any, separator: str, row: int, column: str) -> list[str]:
    if isinstance(candidate, str) and candidate:
        return candidate.split(separator)
    if isinstance(candidate, list) and candidate and all(isinstance(s, str) for s in candidate):
        return candidate
    raise ValueError(f"column {column!r}, row {row}: a candidate must be a string or a list of step strings.")


def check_rows(rows: Sequence[dict[str, Any]], column: str, first_index: int = 0) -> None:
    """Named errors for a malformed row, before any scoring."""
    for offset, row in enumerate(rows):
        index = first_index + offset
        candidates = row.get(column)
        if not isinstance(candidates, list) or not candidates:
            raise ValueError(f"column {column!r}, row {index}: expected a non-empty list of candidate responses.")
        answers = row.get("answers")
        if answers is not None and (not isinstance(answers, list) or len(answers) != len(candidates)):
            raise ValueError(f"column 'answers', row {index}: expected one answer per candidate ({len(candidates)}).")


def score_rows(scorer: Any, rows: Sequence[dict[str, Any]], indices: Sequence[int], column: str) -> list[dict]:
    """The output rows of ``rows`` (input positions ``indices``): every response scored in length-sorted batches."""
    separator = getattr(scorer, "step_separator", "\n\n")
    flat = [
        (r, row["prompt"], _steps(candidate, separator, indices[r], column))
        for r, row in enumerate(rows)
        for candidate in row[column]
    ]
    order = sorted(range(len(flat)), key=lambda i: len(str(flat[i][1])) + sum(len(s) for s in flat[i][2]))
    results = [None] * len(flat)
    scored = scorer.score([flat[i][1] for i in order], [flat[i][2] for i in order]) if order else []
    for i, result in zip(order, scored):
        results[i] = result
    out, position = [], 0
    for r, row in enumerate(rows):
        mine = results[position : position + len(row[column])]
        position += len(mine)
        scores = [m.score for m in mine]
        item = {
            "index": indices[r],
            "step_rewards": [m.step_rewards for m in mine],
            "scores": scores,
            "best": max(range(len(scores)), key=scores.__getitem__),
        }
        if row.get("answers") is not None:
            item["vote"] = weighted_vote(row["answers"], scores)[0]
        out.append(item)
    return out


def done_indices(output: str) -> set[int]:
    """Input rows already in ``output`` (a run resumed skips them)."""
    if not os.path.isfile(output):
        return set()
    if output.endswith(".parquet"):
        import pyarrow.parquet as pq

        return set(pq.read_table(output, columns=["index"])["index"].to_pylist())
    done = set()
    with open(output, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    done.add(json.loads(line)["index"])
                except (json.JSONDecodeError, KeyError):  # a line cut by a crash: that row is scored again
                    continue
    return done


def score_dataset(
    scorer: Any,
    dataset: Any,
    output: str,
    column: str = "completions",
    chunk_size: int = 256,
    progress: bool = True,
) -> int:
    """Score every row of ``dataset`` not yet in ``output`` (``.jsonl`` or ``.parquet``); returns the rows scored
    now. Every process of an ``accelerate launch`` calls it with the same arguments and its own ``scorer``."""
    if not output.endswith((".jsonl", ".parquet")):
        raise ValueError(f"--output must end in .jsonl or .parquet, got {output!r}.")
    check_rows(dataset, column)  # every row, before anything is scored or written
    state = PartialState()
    done = [done_indices(output) if state.is_main_process else None]
    broadcast_object_list(done)  # one view of the finished rows for every process
    todo = [i for i in range(len(dataset)) if i not in done[0]]
    bar = None
    if progress and state.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="Scoring rows", unit="row")
    written: list[dict] = []
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        mine = chunk[state.process_index :: state.num_processes]
        scored = gather_object(score_rows(scorer, [dataset[i] for i in mine], mine, column))
        if state.is_main_process:
            by_index = {r["index"]: r for r in scored}  # one row per input row, whatever the gather returned
            scored = [by_index[i] for i in chunk]
            if output.endswith(".jsonl"):
                with open(output, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in scored)
            else:
                written.extend(scored)
            if bar is not None:
                bar.update(len(chunk))
    if state.is_main_process and output.endswith(".parquet") and written:
        _write_parquet(output, written)
    if bar is not None:
        bar.close()
    state.wait_for_everyone()
    return len(todo)


def _write_parquet(output: str, rows: list[dict]) -> None:
    """The rows, after those of an earlier run, sorted by input index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    if os.path.isfile(output):
        table = pa.concat_tables([pq.read_table(output), table], promote_options="default")
    pq.write_table(table.sort_by("index"), output)
