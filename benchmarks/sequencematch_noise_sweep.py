"""SequenceMatch and BC recovery vs the noise level p of the augmentation (the paper's Fig. 3 axis), 2-digit addition.

Each (p, seed) is one run of ``benchmarks/efficacy_sequencematch.py``'s protocol (MLE and BC warm starts, then MLE,
BC and SequenceMatch for the same steps), at a shorter schedule than the main study so that the sweep fits on a CPU.
p = 0 gives BC no backspace example at all: with it, the MLE-like arms show what noise buys. Writes
``sequencematch-noise.json`` and ``sequencematch-noise.png`` (``--output_dir``, default ``benchmarks/results``).

    python benchmarks/sequencematch_noise_sweep.py --jobs 2        # p in {0, 0.05, 0.1, 0.2} x seeds {0, 1, 2}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import efficacy_sequencematch  # noqa: E402
from studies import mean_std_cell, quiet_process, run_calls  # noqa: E402

from trl_likelihood.lab import plots  # noqa: E402

THREADS = 1  # torch threads per run: efficacy_sequencematch's default
COLUMNS = (("recovery_later", "wrong 2nd digit"), ("recovery_two", "two wrong digits"), ("accuracy", "clean accuracy"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise_probs", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warm_steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval_problems", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--output_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return parser.parse_args(argv)


def _run(p: float, seed: int, args: argparse.Namespace, root: str) -> dict:
    flags = ["--noise_prob", str(p), "--warm_steps", str(args.warm_steps), "--steps", str(args.steps)]
    study = efficacy_sequencematch.parse_args([*flags, "--eval_problems", str(args.eval_problems)])
    return efficacy_sequencematch.run_seed(seed, study, os.path.join(root, f"p{p:g}"))


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """Per noise level: BC and SM, mean ± std over seeds, and SM − BC paired by seed (the arms share the BC warm
    start, so the pairing removes the warm start's luck, which dominates the spread)."""
    header = ["p", *(f"{label}: BC / SM / SM − BC" for _, label in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p, by_seed in results.items():
        runs = list(by_seed.values())
        cells = [p]
        for key, _ in COLUMNS:
            bc, sm = [run["BC"][key] for run in runs], [run["SM"][key] for run in runs]
            paired = [b - a for a, b in zip(bc, sm)]
            parts = ((bc, ".2f"), (sm, ".2f"), (paired, "+.2f"))
            cells.append(" / ".join(mean_std_cell(values, fmt, ".2f") for values, fmt in parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    quiet_process(THREADS)  # the runs' process when --jobs 1; the pool's workers set up the same
    with tempfile.TemporaryDirectory() as root:
        calls = {(p, seed): (p, seed, args, root) for p in args.noise_probs for seed in args.seeds}
        done = run_calls(_run, calls, args.jobs, THREADS)
    results = {f"{p:g}": {str(seed): done[p, seed] for seed in args.seeds} for p in args.noise_probs}
    os.makedirs(args.output_dir, exist_ok=True)
    command = "python benchmarks/sequencematch_noise_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command.strip(), "args": vars(args), "runs": results, "seconds": time.perf_counter() - start}
    with open(os.path.join(args.output_dir, "sequencematch-noise.json"), "w") as f:
        json.dump(report, f, indent=1)
    by_noise = {float(p): list(runs.values()) for p, runs in results.items()}
    png = plots.plot_sequencematch_noise(by_noise, os.path.join(args.output_dir, "sequencematch-noise.png"))
    print(markdown_table(results))
    print(f"wrote {png}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
