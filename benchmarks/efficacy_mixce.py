"""Efficacy of MixCE vs MLE on a known sparse bigram P (ALGORITHMS.md 2(g)): does mixing in the reverse CE cut the
mass a capacity-limited model puts on impossible tokens, and what does it cost in held-out NLL and JS?

Protocol, per seed: a fresh task (P drawn from the seed), 2,000 training sequences, a Qwen2 with hidden 16 < 26 ids,
an MLE warm start saved to disk (pitfall 5: small eta from scratch has no signal), then one arm per eta continued from
it for the same number of steps, with the same data order and seed. Every arm is read at the last step: selecting the
best dev-NLL checkpoint would pick early ones where MixCE has not yet sharpened. Relative changes are paired by seed.

    python benchmarks/efficacy_mixce.py                       # 3 seeds x eta in {1.0, 0.9, 0.5, 0.1}
    python benchmarks/efficacy_mixce.py --seeds 0 1 2 3 --steps 600 --output_dir /tmp/efficacy
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from studies import mean_std_cell, run_study, setup_from_args  # noqa: E402

from trl_likelihood.lab import BigramOracle, bigram_metrics  # noqa: E402
from trl_likelihood.lab.experiments import MixCESetup, mixce_vs_mle  # noqa: E402

METRICS = ("zero_mass", "invalid_rate", "nll", "js")
LABELS = {
    "zero_mass": "mass on impossible tokens",
    "invalid_rate": "invalid-sample rate",
    "nll": "held-out NLL/token",
    "js": "per-context JS",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--etas", type=float, nargs="+", default=[1.0, 0.9, 0.5, 0.1], help="1.0 (MLE) must be one")
    parser.add_argument("--steps", type=int, default=300, help="steps per arm after the warm start")
    parser.add_argument("--warm_steps", type=int, default=200, help="MLE steps shared by every arm")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="constant; Adam(W), no weight decay")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--train_size", type=int, default=2000)
    parser.add_argument("--vocab_size", type=int, default=24)
    parser.add_argument("--max_len", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=16, help="keep below vocab_size + 2: capacity-limited")
    parser.add_argument("--eval_sequences", type=int, default=1000, help="held-out sequences from P (prefixes)")
    parser.add_argument("--eval_samples", type=int, default=2000, help="model samples for the invalid-sample rate")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest for this model size, loaded or not")
    parser.add_argument("--output_dir", default=None, help="checkpoints and results.json; default: a temp dir")
    args = parser.parse_args(argv)
    if 1.0 not in args.etas:
        parser.error("--etas must include 1.0, the MLE arm every change is relative to")
    return args


def run_seed(seed: int, args: argparse.Namespace, root: str) -> dict:
    """One seed through the shared protocol (``trl_likelihood.lab.experiments``), plus the true P as a reference."""
    setup = setup_from_args(MixCESetup, args, seed=seed, arm_steps=args.steps)
    out = mixce_vs_mle(setup, etas=args.etas, output_dir=f"{root}/seed{seed}")
    task = out["task"]
    evaluate = dict(task=task, num_sequences=args.eval_sequences, num_samples=args.eval_samples, seed=seed + 1000)
    results = {"oracle": bigram_metrics(BigramOracle(task), **evaluate)}
    for eta in args.etas:
        results[eta] = out["metrics"][f"eta={eta:g}"]
        print(f"seed {seed} eta {eta}: " + ", ".join(f"{k} {results[eta][k]:.4g}" for k in METRICS), flush=True)
    return results


def markdown_table(runs: dict[int, dict], etas: list[float]) -> str:
    """Mean ± std over seeds of each metric, then the change vs eta = 1 computed within each seed."""
    header = "| η | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = ["Absolute (mean ± std over seeds):", "", header, "|---" * (len(METRICS) + 1) + "|"]
    for eta in etas:
        cells = [mean_std_cell([r[eta][m] for r in runs.values()]) for m in METRICS]
        lines.append(f"| {eta:g}{' (MLE)' if eta == 1.0 else ''} | " + " | ".join(cells) + " |")
    oracle_nll = mean_std_cell([r["oracle"]["nll"] for r in runs.values()])
    lines += ["", f"True P (oracle): held-out NLL/token {oracle_nll}; JS, mass and invalid rate are 0.", ""]
    lines += ["Relative change vs η = 1, paired by seed (mean ± std):", "", header, "|---" * (len(METRICS) + 1) + "|"]
    for eta in etas:
        if eta == 1.0:
            continue
        cells = []
        for m in METRICS:
            changes = [100.0 * (r[eta][m] / r[1.0][m] - 1.0) for r in runs.values()]
            cells.append(mean_std_cell(changes, "+.1f", ".1f", " %"))
        lines.append(f"| {eta:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    etas = sorted(set(args.etas), reverse=True)
    start = time.perf_counter()
    runs = run_study(run_seed, args)  # JSON writes the float keys (the etas) as str() does
    print()
    print(
        f"MixCE efficacy on a sparse bigram P: V={args.vocab_size}, hidden {args.hidden_size}, "
        f"{args.train_size} train sequences, {args.warm_steps} MLE warm-start steps + {args.steps} steps per arm, "
        f"lr {args.learning_rate:g}, seeds {args.seeds}; read at the last step."
    )
    print()
    print(markdown_table(runs, etas))
    print(f"\nWall time: {time.perf_counter() - start:.0f} s ({torch.get_num_threads()} thread(s)).")


if __name__ == "__main__":
    main()
