"""Implicit vs explicit PRMs at equal label budgets on chained modular addition with bug cells, over seeds.

Per seed and budget (labelled solver responses): the implicit PRM on outcome labels (CE, DPO), the explicit PRM (a
token classifier on pi_ref's body) on exact step labels and on Math-Shepherd labels (any of K pi_ref continuations
reaches the answer), all from the same pi_ref for the same passes over their data; controls log pi_ref and a random
scorer. Protocol and choices: ``trl_likelihood/lab/prm_comparison.py``.

    python benchmarks/prm_comparison.py                                     # 3 seeds, budgets 500 1k 3k 10k
    python benchmarks/prm_comparison.py --seeds 0 --budgets 500 3000 --shepherd_k 4 --results_dir /tmp/cmp
    python benchmarks/prm_comparison.py --replot                            # table and plot from the JSON

Writes ``prm-comparison.json`` (flags, command, per-seed results), ``prm-comparison.md`` and ``prm-comparison.png``
to ``--results_dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from studies import mean_std_cell, run_study, setup_from_args  # noqa: E402

from trl_likelihood.lab.plots import PRM_ARMS, budgets_of, plot_prm_comparison  # noqa: E402
from trl_likelihood.lab.prm_comparison import ARMS, ComparisonSetup, compare_prms  # noqa: E402

METRICS = {
    "bug_auroc": "step AUROC in bug cells",
    "step_auroc": "step AUROC, pooled",
    "first_error_f1": "first-error F1",
    "bon4_min": "best-of-4",
    "bon16_min": "best-of-16",
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000, 3000, 10_000])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--shepherd_k", type=int, default=8, help="pi_ref continuations per step (Math-Shepherd)")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over each arm's rows, every arm")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--num_eval", type=int, default=2000)
    parser.add_argument("--num_dev", type=int, default=1000)
    parser.add_argument("--num_prompts", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes")
    parser.add_argument("--output_dir", default=None, help="models (default: a temporary folder)")
    parser.add_argument("--results_dir", default=RESULTS)
    parser.add_argument("--replot", action="store_true", help="no training: table and plot from the JSON")
    return parser.parse_args(argv)


def run_seed(seed: int, args: argparse.Namespace, root: str) -> dict[str, dict[str, float]]:
    setup = setup_from_args(ComparisonSetup, args, seed=seed)
    start = time.perf_counter()
    return compare_prms(
        setup,
        os.path.join(root, f"seed{seed}"),
        on_stage=lambda stage: print(f"seed {seed}: {stage} ({time.perf_counter() - start:.0f} s)", flush=True),
    )


def _cell(runs: dict, key: str, metric: str) -> str:
    return mean_std_cell([run[key][metric] for run in runs.values()], ".3f", ".3f")


def _count(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k" if value >= 1e4 else f"{value:,.0f}"


def markdown_table(runs: dict) -> str:
    """Mean ± std over seeds per arm and budget, with each arm's labelling cost; the controls and baselines after."""
    first = next(iter(runs.values()))
    head = "| arm | budget | " + " | ".join(METRICS.values()) + " | labels | sampled tokens |"
    lines = [head, "|---" * (len(METRICS) + 4) + "|"]
    for arm in [arm for arm in PRM_ARMS if budgets_of(first, arm)]:
        for budget in budgets_of(first, arm):
            key, cost = f"{arm}@{budget}", first[f"{arm}@{budget}"]
            if cost["step_labels"]:
                labels = f"{_count(cost['step_labels'])} step (human)"
            elif cost["rollouts"]:
                labels = f"{_count(cost['outcome_labels'])} answer checks ({_count(cost['rollouts'])} rollouts)"
            else:
                labels = f"{_count(cost['outcome_labels'])} outcome"
            cells = " | ".join(_cell(runs, key, metric) for metric in METRICS)
            tokens = _count(cost["sampled_tokens"])
            lines.append(f"| {PRM_ARMS[arm][0]} | {budget:,} | {cells} | {labels} | {tokens} |")
    for key, name in (("log_pi_ref", "log pi_ref (control)"), ("random", "random scorer")):
        lines.append(f"| {name} | - | " + " | ".join(_cell(runs, key, m) for m in METRICS) + " | 0 | 0 |")
    base = {f"bon{n}_{kind}": None for n in (4, 16) for kind in ("majority", "random", "oracle")}
    text = ", ".join(f"{key.replace('_', ' ')} {_cell(runs, 'baselines', key)}" for key in base)
    lines += ["", f"Selection baselines (no scorer): {text}."]
    shepherd = [first[k] for k in first if k.startswith("explicit_shepherd@")]
    if shepherd:
        agreement = ", ".join(f"{c['label_agreement']:.3f}" for c in shepherd)
        lines.append(f"Math-Shepherd labels agree with the exact step labels on {agreement} of steps (by budget).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, "prm-comparison.json")
    if args.replot:
        with open(json_path) as f:
            saved = json.load(f)
    else:
        command = shlex.join(["python", "benchmarks/prm_comparison.py", *(sys.argv[1:] if argv is None else argv)])
        start = time.perf_counter()
        runs = run_study(run_seed, args, jobs=args.jobs, save=False)
        seconds = time.perf_counter() - start
        saved = {"command": command, "args": vars(args), "seconds": seconds, "threads": torch.get_num_threads()}
        saved["runs"] = runs
        with open(json_path, "w") as f:
            json.dump(saved, f, indent=1)
    runs = {int(seed): run for seed, run in saved["runs"].items()}
    plot_prm_comparison(list(runs.values()), os.path.join(args.results_dir, "prm-comparison.png"))
    a = saved["args"]
    text = (
        f"# Implicit vs explicit PRMs at equal label budgets\n\nGenerated by `{saved['command']}` "
        f"({saved['seconds'] / 60:.0f} min, {saved['threads']} thread(s), seeds {sorted(runs)}). Every arm trains "
        f"{a['epochs']:g} epochs over its own rows (batch 64, lr 1e-3) from the same pi_ref; Math-Shepherd with "
        f"K = {a['shepherd_k']} continuations per step. Mean ± std over seeds; evaluation on {a['num_eval']:,} "
        f"held-out solver responses (F1 threshold on {a['num_dev']:,} dev responses) and best-of-N over "
        f"{a['num_prompts']} prompts x 16 pi_ref samples.\n\n{markdown_table(runs)}\n\n"
        "![Implicit vs explicit PRMs](prm-comparison.png)\n"
    )
    with open(os.path.join(args.results_dir, "prm-comparison.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
