"""Efficacy of DDO vs continued MLE on a known sparse bigram P (ALGORITHMS.md 5(g)): does a likelihood-ratio
discriminator sharpen an over-dispersed reference more than MLE does in the same number of steps?

Protocol, per seed (``trl_likelihood.lab.experiments.ddo_vs_mle``): a fresh task (P drawn from the seed) with
fixed-length sequences (16 tokens, no EOS: fakes are as long as real rows, so length is no cue), 5,000 training
sequences, a Qwen2 with hidden 32, a reference trained by MLE with label smoothing 0.1 (over-dispersed: DDO's
mode-covering premise), then continued MLE and DDO (alpha 1, beta 0.5, fresh fakes every step) from it, with the same
data order and seed, both read at the end of each DDO round (150 steps). Negative control: the same two arms from a
reference trained by MLE without smoothing (cosine decay to its optimum), where the theory expects no gain. Relative
changes are paired by seed.

Measured (seeds 0-2, 1 thread, 6.5-9 minutes on a shared 2-core machine), DDO relative to MLE at the same step,
paired by seed: after one round, invalid rate -21.5 +- 3.1 % and impossible mass -25.2 +- 1.6 % (DDO ahead), JS
+23.8 +- 1.6 % and NLL +0.7 +- 0.1 % (MLE ahead); after 2 and 3 rounds the precision advantage is gone (invalid
+1.8 % / +4.9 %, impossible mass +3.7 % / +9.8 %) and MLE stays ahead on JS. Against the reference DDO cuts the
invalid rate by 76-82 %, with distinct valid bigrams and token entropy at the level of P's own samples. Negative
control: from the unsmoothed reference DDO still lowers the invalid rate (-23 % after 1 round, -49 % after 3) but
raises JS (+44-74 %) and NLL (+1.1-1.4 %), and continued MLE beats it on every metric: no gain, a trade of
closeness for precision instead. That control is not at its MLE optimum, though (it over-fits the 5,000 rows, and
continued MLE still improves it).

``--optimal_control``: the negative control alone, as a failable check. The reference is at (near) P's
within-family MLE optimum (``DDO_OPTIMAL_CONTROL``: 1,000 steps of batch 256 on 260,000 fresh rows, one pass, cosine
from 3e-3; held-out NLL 0.006-0.007 nats/token above P's entropy); continued MLE and DDO run from it on other fresh
rows (one pass, same order) at a fine-tuning lr (1e-4), DDO with beta 2. The run exits with status 1 if, in any seed
and round, DDO is worse than the reference or than continued MLE at the same step by more than ``ControlMargins``
(JS +15 % vs the reference and +10 % vs MLE, NLL +0.2 %, impossible mass +5 %, invalid rate +0.03, distinct valid
bigrams -5 %, entropy -0.05). Continued MLE is a yardstick, not a fixed point: it drifts too (Adam on fresh batches).

Measured (seeds 0-2, 3 rounds of 150 steps, ``--jobs 3``, 11-22 minutes on the loaded shared machine), DDO relative to
the reference after rounds 1/2/3: JS +5.2/+4.9/+4.9 % (worst seed +6.7 %; continued MLE +5.6/+3.2/+2.3 %), NLL +0.0 %,
invalid rate -0.7/-2.8/-2.0 %, impossible mass -1.1/-1.9/-2.9 %, distinct valid bigrams and entropy unchanged; DDO
relative to MLE: JS -0.4/+1.7/+2.5 %, impossible mass +1.0/+2.2/+3.3 %, invalid rate +1.6/+2.3/+5.5 % (+0.008 at
worst). So DDO does no harm at the optimum, and gains nothing there either.

Why beta matters there: at the optimum both of DDO's terms have zero mean gradient, and for small beta the loss is
(beta/2) [NLL - KL(p_ref || p_theta)], flat around p_ref, so Adam turns the sampling noise into a random walk; the
beta^2 term is the only restoring force, and DDO's drift relative to MLE's falls like 1/beta. Earlier runs (arms on
rows the reference had seen; seed 0, 150 steps at lr 1e-4; JS vs the reference, continued MLE +3.9 %): beta 0.2
+42 %, 0.5 +20 % (3 seeds), 1 +9.6 %, 2 +3.9 %; at lr 3e-4, beta 0.5 +67 % (3 seeds, continued MLE +17 %). The
price: from the over-dispersed reference (lr 3e-3, seed 0, one round) beta 2 sharpens less than beta 0.5 (invalid
rate 0.30 vs 0.15; continued MLE 0.21), so the main run keeps beta 0.5.

    python benchmarks/efficacy_ddo.py                      # 3 seeds, 3 rounds (read after 1, 2 and 3), control
    python benchmarks/efficacy_ddo.py --seeds 0 1 --rounds 2 --no_control --output_dir /tmp/efficacy
    python benchmarks/efficacy_ddo.py --optimal_control --jobs 3          # the negative control: 3 seeds, 3 rounds
    python benchmarks/efficacy_ddo.py --optimal_control --control_beta 0.5 --control_arm_learning_rate 3e-4
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from studies import mean_std_cell, run_study, setup_from_args  # noqa: E402

from trl_likelihood.lab import BigramOracle, bigram_metrics, sample_diversity  # noqa: E402
from trl_likelihood.lab.experiments import (  # noqa: E402
    DDO_OPTIMAL_CONTROL,
    ControlMargins,
    DDOSetup,
    ddo_control_failures,
    ddo_vs_mle,
)

METRICS = ("invalid_rate", "zero_mass", "js", "nll", "distinct_valid_bigrams", "token_entropy")
LABELS = {
    "invalid_rate": "invalid-sample rate",
    "zero_mass": "mass on impossible tokens",
    "js": "per-context JS",
    "nll": "held-out NLL/token",
    "distinct_valid_bigrams": "distinct valid bigrams",
    "token_entropy": "sample token entropy",
}


OPTIMAL_CONTROL = DDO_OPTIMAL_CONTROL  # the negative control at (near) its MLE optimum, and its arms' lr and beta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DDOSetup()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="DDO rounds; both arms are read after each")
    parser.add_argument("--round_steps", type=int, default=defaults.round_steps)
    parser.add_argument("--ref_steps", type=int, default=defaults.ref_steps, help="label-smoothed reference")
    parser.add_argument(
        "--control_steps", type=int, default=None, help=f"unsmoothed reference; default: {defaults.control_steps}"
    )
    parser.add_argument("--control_batch_size", type=int, default=defaults.control_batch_size, help="default: batch")
    parser.add_argument(
        "--control_learning_rate", type=float, default=defaults.control_learning_rate, help="peak; default: lr"
    )
    parser.add_argument(
        "--control_arm_learning_rate",
        type=float,
        default=defaults.control_arm_learning_rate,
        help="both arms from the control; default: lr",
    )
    parser.add_argument(
        "--control_train_size", type=int, default=None, help="the control's own fresh data; default: the shared data"
    )
    parser.add_argument("--control_beta", type=float, default=None, help="DDO's beta from the control; default: beta")
    parser.add_argument(
        "--optimal_control",
        action="store_true",
        help=f"only the control, at P's within-family MLE optimum, checked against ControlMargins (exit 1 if DDO is "
        f"worse); defaults {OPTIMAL_CONTROL} (a flag given wins)",
    )
    parser.add_argument("--label_smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="real rows (DDO adds as many)")
    parser.add_argument("--hidden_size", type=int, default=defaults.hidden_size)
    parser.add_argument("--no_control", action="store_true", help="skip the negative control")
    parser.add_argument("--eval_sequences", type=int, default=defaults.eval_sequences, help="held-out sequences")
    parser.add_argument("--eval_samples", type=int, default=defaults.eval_samples, help="model samples per read")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest for this model size, loaded or not")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (one thread each)")
    parser.add_argument("--output_dir", default=None, help="checkpoints and results.json; default: a temp dir")
    args = parser.parse_args(argv)
    for key, value in OPTIMAL_CONTROL.items() if args.optimal_control else ():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.control_steps is None:
        args.control_steps = defaults.control_steps
    return args


def run_seed(seed: int, args: argparse.Namespace, root: str) -> dict:
    setup = setup_from_args(DDOSetup, args, seed=seed, num_rounds=args.rounds)
    start = time.perf_counter()
    out = ddo_vs_mle(
        setup,
        f"{root}/seed{seed}",
        control=args.optimal_control or not args.no_control,
        main=not args.optimal_control,
        on_stage=lambda name: print(f"seed {seed}: {name} done ({time.perf_counter() - start:.0f} s)", flush=True),
    )
    task, held_out = out["task"], seed + 1000  # ddo_vs_mle's held-out seed: the oracle sees the same prefixes
    oracle = bigram_metrics(BigramOracle(task), task, setup.eval_sequences, setup.eval_samples, held_out)
    oracle |= sample_diversity(task.sample(setup.eval_samples, held_out + 1), task)
    return out["metrics"] | {"oracle": oracle}


def rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(label, metrics key) of every row of the table, in order."""
    out = []
    for prefix, ref in (("", "reference (MLE, label smoothing)"), ("control-", "control (MLE optimum)")):
        if (prefix and args.no_control and not args.optimal_control) or (not prefix and args.optimal_control):
            continue
        out.append((ref, prefix.rstrip("-") or "reference"))
        for r in range(1, args.rounds + 1):
            step = r * args.round_steps
            out.append((f"{prefix}MLE, {step} steps", f"{prefix}mle@{step}"))
            out.append((f"{prefix}DDO, {r} round{'s' * (r > 1)} ({step} steps)", f"{prefix}ddo@{step}"))
    return out


def markdown_table(runs: dict[int, dict], args: argparse.Namespace) -> str:
    header = "| arm | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = ["Absolute (mean ± std over seeds):", "", header, "|---" * (len(METRICS) + 1) + "|"]
    for label, key in [*rows(args), ("true P (its own samples)", "oracle")]:
        cells = [mean_std_cell([r[key][m] for r in runs.values()]) for m in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += _relative_table(runs, args, "DDO relative to MLE at the same step", _mle_at_same_step)
    lines += _relative_table(runs, args, "DDO relative to its own reference", _own_reference)
    return "\n".join(lines)


def _mle_at_same_step(key: str) -> str:
    return key.replace("ddo@", "mle@")


def _own_reference(key: str) -> str:
    return "control" if key.startswith("control-") else "reference"


def _relative_table(
    runs: dict[int, dict], args: argparse.Namespace, title: str, base: Callable[[str], str]
) -> list[str]:
    """Every DDO row's relative change vs ``base(its key)``, paired by seed, after a blank line and ``title``."""
    header = "| arm | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = ["", f"{title}, paired by seed (mean ± std):", "", header, "|---" * (len(METRICS) + 1) + "|"]
    for label, key in rows(args):
        if "ddo@" not in key:
            continue
        changes = {m: [100.0 * (r[key][m] / r[base(key)][m] - 1.0) for r in runs.values()] for m in METRICS}
        lines.append(
            f"| {label} | " + " | ".join(mean_std_cell(changes[m], "+.1f", ".1f", " %") for m in METRICS) + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    runs = run_study(run_seed, args, args.jobs)
    print()
    print(describe(args))
    print()
    print(markdown_table(runs, args))
    print(f"\nWall time: {time.perf_counter() - start:.0f} s ({torch.get_num_threads()} thread(s)).")
    if args.optimal_control:
        check_control(runs, args)


def describe(args: argparse.Namespace) -> str:
    """One line with the settings the table was measured with."""
    control = (
        f"control {args.control_steps} MLE steps (cosine; batch {args.control_batch_size or args.batch_size}, peak lr "
        f"{args.control_learning_rate or args.learning_rate:g}, data {args.control_train_size or 'shared'}; its arms' "
        f"lr {args.control_arm_learning_rate or args.learning_rate:g}, DDO's beta {args.control_beta or args.beta:g})"
    )
    reference = f"reference {args.ref_steps} MLE steps with label smoothing {args.label_smoothing:g} (lr "
    reference += f"{args.learning_rate:g}, DDO's beta {args.beta:g})"
    starts = control if args.optimal_control else reference + ("" if args.no_control else f", {control}")
    return (
        f"DDO efficacy on a sparse bigram P, fixed length 16, no EOS: hidden {args.hidden_size}, {starts}; arms "
        f"{args.rounds} x {args.round_steps} steps, alpha {args.alpha:g}, batch {args.batch_size} real (+"
        f"{args.batch_size} fakes for DDO), seeds {args.seeds}; read at the end of each round."
    )


def check_control(runs: dict[int, dict], args: argparse.Namespace) -> None:
    """Exit with status 1 when DDO from the MLE-optimal control is worse than ``ControlMargins`` allow, in any seed."""
    steps = [r * args.round_steps for r in range(1, args.rounds + 1)]
    margins = ControlMargins()
    failures = [
        f"seed {seed}: {line}" for seed, run in runs.items() for line in ddo_control_failures(run, steps, margins)
    ]
    print(f"\nNegative control, every seed and round, margins {margins}:")
    print("\n".join(f"  FAIL {line}" for line in failures) or "  PASS: DDO is no worse than the reference or MLE.")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
