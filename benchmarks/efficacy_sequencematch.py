"""Efficacy of SequenceMatch vs BC vs MLE on digit addition (ALGORITHMS.md 3(g)): after a forced wrong answer
start, does the model delete it with <bkspc> and answer correctly, inside and outside the augmentation distribution?

Protocol, per seed (``trl_likelihood.lab.backtracking``): 2-digit addition written least-significant digit first,
5,000 training problems, a Qwen2 with 2 layers and hidden 128; an MLE warm start on clean data and a BC warm start on
noise-augmented data (p = 0.1, a wrong digit then <bkspc>), both from the same initial weights; then MLE, BC and
SequenceMatch (from the BC warm start: (1 - lam) L_BC + lam L_SM with replay-buffer rollouts) for the same number of
steps. Metrics on 1,000 held-out problems, sampled at temperature 1 with backspaces applied.

Acceptance (issue 5, from the calibration): SequenceMatch recovers far more often than MLE, and is no worse than BC:
recovery >= BC - 0.03 for every corruption, clean accuracy >= BC - 0.02, held-out NLL <= BC + 0.02 (all on the mean
over seeds). ``--check`` exits non-zero when one fails.

    python benchmarks/efficacy_sequencematch.py                   # 3 seeds
    python benchmarks/efficacy_sequencematch.py --seeds 0 --warm_steps 600 --steps 200 --check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from studies import mean_std_cell, run_study, setup_from_args  # noqa: E402

from trl_likelihood.lab.backtracking import SMSetup, sequencematch_vs_bc  # noqa: E402

ARMS = ("MLE", "BC", "SM")
METRICS = (
    ("accuracy", "clean acc."),
    ("recovery_first", "recovery: wrong 1st digit"),
    ("recovery_later", "wrong 2nd digit"),
    ("recovery_two", "two wrong digits"),
    ("recovery_buried", "wrong 1st, right 2nd"),
    ("bkspc_rate_clean", "<bkspc> use, clean"),
    ("bkspc_rate_first", "<bkspc> use, wrong 1st"),
    ("nll", "held-out NLL"),
)
RECOVERY = [key for key, _ in METRICS if key.startswith("recovery_")]
# Where the mistake is the last token (or the last two): a model that learnt to backspace can delete it. The "buried"
# corruption (wrong digit, then a right one) needs two deletions of a token that is not wrong itself; no arm manages
# it at this scale (calibration: ~0.05), so it is reported, not required.
FAR_ABOVE_MLE = ("recovery_first", "recovery_later", "recovery_two")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warm_steps", type=int, default=2000, help="MLE / BC warm-start steps")
    parser.add_argument("--steps", type=int, default=600, help="steps per arm after the warm start")
    parser.add_argument("--noise_prob", type=float, default=0.1)
    parser.add_argument("--chi2_coef", type=float, default=0.5)
    parser.add_argument("--sm_weight", type=float, default=0.5)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_problems", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--check", action="store_true", help="exit 1 when an acceptance criterion fails")
    parser.add_argument("--output_dir", default=None, help="checkpoints and results.json; default: a temp dir")
    return parser.parse_args(argv)


def run_seed(seed: int, args: argparse.Namespace, root: str) -> dict:
    setup = setup_from_args(SMSetup, args, seed=seed, arm_steps=args.steps)
    metrics = sequencematch_vs_bc(setup, f"{root}/seed{seed}")["metrics"]
    for arm in ARMS:
        print(f"seed {seed} {arm}: " + ", ".join(f"{k} {metrics[arm][k]:.3f}" for k, _ in METRICS), flush=True)
    return metrics


def _mean(runs: dict[int, dict], arm: str, key: str) -> float:
    return statistics.fmean(r[arm][key] for r in runs.values())


def markdown_table(runs: dict[int, dict], args: argparse.Namespace | None = None) -> str:
    """Mean ± std over seeds of each metric per arm, and SM - BC paired by seed."""
    header = "| arm | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [header, "|---" * (len(METRICS) + 1) + "|"]

    def cell(values: list[float], signed: bool = False) -> str:
        return mean_std_cell(values, "+.3f" if signed else ".3f", ".3f")

    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(cell([r[arm][k] for r in runs.values()]) for k, _ in METRICS) + " |")
    diffs = [cell([r["SM"][k] - r["BC"][k] for r in runs.values()], signed=True) for k, _ in METRICS]
    lines.append("| SM − BC (paired) | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def acceptance(runs: dict[int, dict]) -> list[tuple[str, bool]]:
    """The issue's criteria on the means over seeds: (description, held)."""
    checks = []
    for key in RECOVERY:
        sm, bc, mle = (_mean(runs, arm, key) for arm in ("SM", "BC", "MLE"))
        if key in FAR_ABOVE_MLE:
            checks.append((f"{key}: SM {sm:.3f} >= MLE {mle:.3f} + 0.5", sm >= mle + 0.5))
        checks.append((f"{key}: SM {sm:.3f} >= BC {bc:.3f} - 0.03", sm >= bc - 0.03))
    sm, bc = _mean(runs, "SM", "accuracy"), _mean(runs, "BC", "accuracy")
    checks.append((f"clean accuracy: SM {sm:.3f} >= BC {bc:.3f} - 0.02", sm >= bc - 0.02))
    sm, bc = _mean(runs, "SM", "nll"), _mean(runs, "BC", "nll")
    checks.append((f"held-out NLL: SM {sm:.3f} <= BC {bc:.3f} + 0.02", sm <= bc + 0.02))
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    runs = run_study(run_seed, args, args.jobs, indent=1)
    print(
        f"\nSequenceMatch efficacy on 2-digit addition: {args.warm_steps} warm-start steps + {args.steps} per arm, "
        f"noise p={args.noise_prob}, chi2_coef={args.chi2_coef}, sm_weight={args.sm_weight}, seeds {args.seeds}.\n"
    )
    print(markdown_table(runs))
    checks = acceptance(runs)
    print("\nAcceptance:")
    for text, held in checks:
        print(f"- [{'x' if held else ' '}] {text}")
    print(f"\nWall time: {time.perf_counter() - start:.0f} s ({torch.get_num_threads()} thread(s)).")
    return 1 if args.check and not all(held for _, held in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
