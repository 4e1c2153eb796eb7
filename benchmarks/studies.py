"""What the efficacy studies (``efficacy*.py``, ``sequencematch_noise_sweep.py``) share, so that each keeps only its
protocol and tables: seeds run here or in a pool of fresh processes, a protocol's setup dataclass filled from the
flags of the same names, and ``mean ± std`` cells.

The scripts import it by name (``python benchmarks/<script>.py`` puts this folder first on ``sys.path``); importing it
puts the checkout first too, so that ``trl_likelihood`` resolves there, also in spawned workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

T = TypeVar("T")
K = TypeVar("K")
S = TypeVar("S")


def quiet_process(threads: int) -> None:
    """``threads`` torch threads and quiet logs: what an efficacy script's ``main`` sets, for a process it did not
    start in (a spawned worker inherits neither)."""
    import torch

    from trl_likelihood.lab.experiments import quiet_logs

    torch.set_num_threads(threads)
    quiet_logs()


def run_calls(fn: Callable[..., T], calls: dict[K, tuple], jobs: int = 1, threads: int = 1) -> dict[K, T]:
    """``fn(*call)`` for every call, keyed as ``calls``: in this process one after another when ``jobs <= 1``, else
    in ``jobs`` spawned processes set up by ``quiet_process(threads)``. The calls must be independent (own seed,
    own folder), so both give the same results."""
    if jobs <= 1:
        return {key: fn(*call) for key, call in calls.items()}
    context = get_context("spawn")  # not fork: forking after torch has started its OpenMP threads is unsafe
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=quiet_process, initargs=(threads,)) as pool:
        futures = {key: pool.submit(fn, *call) for key, call in calls.items()}
        return {key: future.result() for key, future in futures.items()}


def run_seeds(
    run_seed: Callable[[int, argparse.Namespace, str], T], args: argparse.Namespace, root: str, jobs: int = 1
) -> dict[int, T]:
    """``run_seed(seed, args, root)`` for every seed of ``args.seeds``, in ``jobs`` processes (``run_calls``)."""
    return run_calls(run_seed, {seed: (seed, args, root) for seed in args.seeds}, jobs, args.threads)


def run_study(
    run_seed: Callable[[int, argparse.Namespace, str], T],
    args: argparse.Namespace,
    jobs: int = 1,
    indent: int | None = None,
    save: bool = True,
) -> dict[int, T]:
    """An efficacy script's seeds: this process set up by ``quiet_process(args.threads)``, every seed run into
    ``args.output_dir`` (else a temporary folder, removed), and ``results.json`` (flags and runs) written there when
    ``save`` and it was given."""
    quiet_process(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_seeds(run_seed, args, args.output_dir or tmp, jobs)
    if save and args.output_dir:
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=indent)
    return runs


def setup_from_args(setup_cls: Callable[..., S], args: argparse.Namespace, **given: Any) -> S:
    """A protocol's setup dataclass: every field with a flag of the same name from ``args``, the others from
    ``given`` (the seed, renamed flags) or the dataclass's defaults."""
    names = {field.name for field in dataclasses.fields(setup_cls)} & set(vars(args))
    return setup_cls(**{name: getattr(args, name) for name in sorted(names)}, **given)


def mean_std_cell(values: Sequence[float], fmt: str = ".4g", std_fmt: str = ".2g", unit: str = "") -> str:
    """``mean ± std`` over seeds (the sample std; 0 for one seed), as a table cell."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}}{unit} ± {std:{std_fmt}}{unit}"
