"""Efficacy report: every method on its known-truth lab task, over seeds, against its control at matched compute,
written as a Markdown table (``efficacy.md``) and PNG plots.

Each method's protocol, runner and table are its own benchmark's (``benchmarks/efficacy_<method>.py``, built on
``trl_likelihood.lab.experiments``); this script runs them over the same seeds, collects the per-seed results in
``efficacy.json`` and draws the plots of ``trl_likelihood.lab.plots``. A method is one entry of ``METHODS``.

    python benchmarks/efficacy.py                                   # every method, seeds 0 1 2 -> benchmarks/results/
    python benchmarks/efficacy.py --methods mixce ddo --seeds 0 --quick --output_dir /tmp/efficacy   # smoke run
    python benchmarks/efficacy.py --replot                          # tables and plots again from efficacy.json

Results accumulate in ``<output_dir>/efficacy.json``: a run replaces the methods it runs and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import efficacy_ddo  # noqa: E402
import efficacy_implicit_prm  # noqa: E402
import efficacy_mixce  # noqa: E402
import efficacy_sequencematch  # noqa: E402
import prm_comparison  # noqa: E402
import sequencematch_noise_sweep  # noqa: E402
import torch  # noqa: E402
from studies import run_seeds  # noqa: E402

from trl_likelihood.lab import plots  # noqa: E402
from trl_likelihood.lab.experiments import quiet_logs  # noqa: E402

Run = dict[str, Any]  # one seed's results, as the method's ``run_seed`` returns them


@dataclass(frozen=True)
class Extra:
    """Another study of a method, run by its own script: its plot and results JSON in the output dir, what made
    them, and ``table(runs)`` for its Markdown table."""

    image: str
    caption: str
    results: str = ""
    table: Callable[[dict[str, Any]], str] | None = None


@dataclass(frozen=True)
class Method:
    """One method's part of the report.

    ``benchmark`` is its script's module: ``parse_args(argv)``, ``run_seed(seed, args, root)`` and
    ``markdown_table(runs, args)`` (or ``table`` to adapt another signature). ``full`` and ``quick`` are its flags in
    the full report and in ``--quick``. ``plot(runs, path)`` draws the per-seed results; ``decode`` turns a seed's
    results read back from JSON into ``run_seed``'s form (JSON keys are strings).
    """

    title: str
    summary: str
    benchmark: ModuleType
    plot: Callable[[list[Run], str], str]
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    table: Callable[[dict[int, Run], argparse.Namespace], str] | None = None
    decode: Callable[[Run], Run] = lambda run: run
    extras: tuple[Extra, ...] = ()  # other studies of the method, shown when their files are present

    def markdown(self, runs: dict[int, Run], args: argparse.Namespace) -> str:
        return self.table(runs, args) if self.table else self.benchmark.markdown_table(runs, args)


def _mixce_decode(run: Run) -> Run:
    return {key if key == "oracle" else float(key): value for key, value in run.items()}


METHODS: dict[str, Method] = {
    "mixce": Method(
        title="MixCE vs MLE (sparse random bigram, capacity-limited model)",
        summary=(
            "Per seed: a fresh sparse bigram P, a Qwen2 with hidden 16 (below the 26 ids, so it cannot represent P), "
            "an MLE warm start, then one arm per eta continued from it for the same number of steps with the same "
            "data order; eta = 1 is the MLE control. Metrics are exact (P is known). Lower is better everywhere."
        ),
        benchmark=efficacy_mixce,
        plot=plots.plot_mixce,
        quick=["--etas", "1.0", "0.5", "0.1", "--steps", "20", "--warm_steps", "20", "--train_size", "200"]
        + ["--eval_sequences", "100", "--eval_samples", "200"],
        table=lambda runs, args: efficacy_mixce.markdown_table(runs, sorted(set(args.etas), reverse=True)),
        decode=_mixce_decode,
    ),
    "implicit-prm": Method(
        title="Implicit PRM vs controls (chained modular addition with bug cells)",
        summary=(
            "Per seed: pi_ref trained by MLE on a noisy solver whose bug cells are errors pi_ref itself prefers "
            "(pi_ref(bug) ~ 0.7), then a PRM trained from pi_ref on outcome labels only. The control scores steps by "
            "pi_ref's own log-likelihood (the MLE model, no extra training); a random scorer, random pick, majority "
            "vote over final answers (outcome only) and the oracle bound the best-of-N accuracy of candidates sampled "
            "from pi_ref. Higher is better."
        ),
        benchmark=efficacy_implicit_prm,
        plot=plots.plot_implicit_prm,
        full=["--ns", "1", "2", "4", "8", "16"],
        quick=["--num_labels", "200", "--epochs", "0.5", "--ns", "1", "4", "16"],
        extras=(
            Extra(
                "prm-comparison.png",
                "Implicit vs explicit PRMs at equal label budgets (outcome labels, exact step labels, Math-Shepherd "
                "labels from pi_ref rollouts; `python benchmarks/prm_comparison.py`, results in "
                "`prm-comparison.json`, protocol in `trl_likelihood/lab/prm_comparison.py`):",
                results="prm-comparison.json",
                table=prm_comparison.markdown_table,
            ),
        ),
    ),
    "ddo": Method(
        title="DDO vs continued MLE (fixed-length sparse bigram, over-dispersed reference)",
        summary=(
            "Per seed: a reference trained by MLE with label smoothing 0.1 (broader than the data: DDO's premise), "
            "then DDO (alpha 1, beta 0.5, fresh reference samples every step, the reference renewed each round) and "
            "continued MLE from it for the same steps with the same data order, both read at the end of each round. "
            "Sequences have a fixed length and no EOS, so length is no cue. Lower is better, except diversity "
            "(compare with true P)."
        ),
        benchmark=efficacy_ddo,
        plot=plots.plot_ddo,
        full=["--no_control"],  # the negative control is its own study: benchmarks/efficacy_ddo.py --optimal_control
        quick=["--rounds", "2", "--round_steps", "10", "--ref_steps", "20", "--no_control"]
        + ["--eval_sequences", "100", "--eval_samples", "200"],
    ),
    "sequencematch": Method(
        title="SequenceMatch vs BC vs MLE (2-digit addition, recovery from a corrupted answer start)",
        summary=(
            "Per seed: an MLE warm start on clean data and a BC warm start on noise-augmented data (p = 0.1: a wrong "
            "digit then <bkspc>), both from the same initial weights; then MLE, BC and SequenceMatch (from the BC "
            "warm start, 0.5 BC + 0.5 L_SM with replay-buffer rollouts) for the same steps. Sampled at temperature 1 "
            "on 1,000 held-out problems, backspaces applied; recovery = the right answer after a forced wrong answer "
            "start. Higher is better, except the NLL."
        ),
        benchmark=efficacy_sequencematch,
        plot=plots.plot_sequencematch,
        quick=["--warm_steps", "30", "--steps", "10", "--eval_problems", "100"],
        extras=(
            Extra(
                "sequencematch-noise.png",
                "Recovery vs noise level (1,000 warm-start + 300 steps, 500 problems, 3 seeds; "
                "`python benchmarks/sequencematch_noise_sweep.py --jobs 3`, results in `sequencematch-noise.json`):",
                results="sequencematch-noise.json",
                table=sequencematch_noise_sweep.markdown_table,
            ),
        ),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke configuration (seconds, not minutes)")
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--replot", action="store_true", help="no training: tables and plots from efficacy.json")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest for these tiny models")
    return parser.parse_args(argv)


def run_method(name: str, seeds: list[int], quick: bool, root: str) -> dict[str, Any]:
    """Every seed of one method through its benchmark's ``run_seed``; returns its flags, runs and wall time."""
    method, start = METHODS[name], time.perf_counter()
    flags = method.quick if quick else method.full
    args = method.benchmark.parse_args([*flags, "--seeds", *map(str, seeds)])
    runs = run_seeds(method.benchmark.run_seed, args, os.path.join(root, name))
    return {"flags": flags, "runs": runs, "seconds": time.perf_counter() - start}


def render(results: dict[str, Any], output_dir: str) -> str:
    """Write the plots and ``efficacy.md`` from ``efficacy.json``'s content; return the Markdown."""
    commands = sorted({result["command"] for result in results["methods"].values()})
    lines = ["# Efficacy report", "", "Generated by " + ", ".join(f"`{c}`" for c in commands) + ".", ""]
    lines += [
        "Mean ± std over seeds; every arm is compared with its control trained the same number of steps from the "
        "same start, paired by seed. CPU, 1 thread.",
        "",
    ]
    for name in [name for name in METHODS if name in results["methods"]]:
        method, result = METHODS[name], results["methods"][name]
        runs = {int(seed): method.decode(run) for seed, run in result["runs"].items()}
        args = method.benchmark.parse_args([*result["flags"], "--seeds", *map(str, runs)])
        png = method.plot(list(runs.values()), os.path.join(output_dir, f"{name}.png"))
        lines += [f"## {method.title}", "", method.summary, ""]
        flags = shlex.join(result["flags"]) or "(defaults)"
        lines += [f"Seeds {sorted(runs)}; the benchmark's flags: `{flags}`; {result['seconds']:.0f} s.", ""]
        lines += [method.markdown(runs, args), "", f"![{method.title}]({os.path.basename(png)})", ""]
        for extra in method.extras:
            lines += _extra_lines(extra, output_dir)
    text = "\n".join(lines)
    with open(os.path.join(output_dir, "efficacy.md"), "w") as f:
        f.write(text)
    return text


def _extra_lines(extra: Extra, output_dir: str) -> list[str]:
    """An extra study's caption, plot and table, for the parts whose files are in ``output_dir``."""
    if not os.path.exists(os.path.join(output_dir, extra.image)):
        return []
    lines = [extra.caption, "", f"![{extra.image}]({extra.image})", ""]
    results = os.path.join(output_dir, extra.results)
    if extra.table and extra.results and os.path.exists(results):
        with open(results) as f:
            lines += [extra.table(json.load(f)["runs"]), ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, "efficacy.json")
    results = {"methods": {}}
    if os.path.exists(json_path):  # results of methods not re-run this time are kept
        with open(json_path) as f:
            results = json.load(f)
    if not args.replot:
        torch.set_num_threads(args.threads)
        quiet_logs()
        command = shlex.join(["python", "benchmarks/efficacy.py", *(sys.argv[1:] if argv is None else argv)])
        with tempfile.TemporaryDirectory() as root:
            for name in args.methods:
                result = {"command": command, **run_method(name, args.seeds, args.quick, root)}
                results["methods"][name] = result
                with open(json_path, "w") as f:  # after each method: a later failure keeps the earlier ones
                    json.dump(results, f, indent=1)
                print(f"{name}: done in {result['seconds']:.0f} s", flush=True)
    print(render(results, args.output_dir))


if __name__ == "__main__":
    main()
