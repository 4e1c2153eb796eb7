"""Efficacy of the implicit PRM on chained modular addition with bug cells (ALGORITHMS.md 4(g)), over seeds.

Per seed: a fresh task (bug cells drawn from the seed), pi_ref trained by MLE on the noisy solver, a PRM trained from
pi_ref on outcome labels only (``--loss_types``), then every scorer on the same held-out responses and the same pi_ref
candidates: the PRM, the log pi_ref control (prefers the bug values), a random scorer, and the selection baselines.

    python benchmarks/efficacy_implicit_prm.py                      # 3 seeds, CE
    python benchmarks/efficacy_implicit_prm.py --loss_types ce dpo --seeds 0 1 2 --output_dir /tmp/prm
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from trl_likelihood.lab.experiments import PRMSetup, implicit_prm_vs_controls  # noqa: E402

STEP_METRICS = {
    "bug_auroc": "step AUROC in bug cells",
    "step_auroc": "step AUROC, pooled",
    "localisation": "first-error localisation",
    "outcome_auroc": "outcome AUROC",
    "bon4_min": "best-of-4 (min r)",
    "bon16_min": "best-of-16 (min r)",
}
BASELINES = {"bon4_random": "best-of-4 random", "bon4_majority": "best-of-4 majority vote", "bon4_oracle":
             "best-of-4 oracle", "bon16_random": "best-of-16 random", "bon16_majority": "best-of-16 majority vote",
             "bon16_oracle": "best-of-16 oracle"}  # fmt: skip


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loss_types", nargs="+", default=["ce"], choices=["ce", "dpo"])
    parser.add_argument("--num_labels", type=int, default=3000)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--responses_per_prompt", type=int, default=4, help="dpo pairs responses of one prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    start = time.perf_counter()
    arms: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.output_dir or tmp
        for seed in args.seeds:
            for loss_type in args.loss_types:
                setup = PRMSetup(seed=seed, num_labels=args.num_labels, beta=args.beta, epochs=args.epochs,
                                 loss_type=loss_type, responses_per_prompt=args.responses_per_prompt)  # fmt: skip
                out = implicit_prm_vs_controls(setup, f"{root}/seed{seed}")
                arms.setdefault(f"implicit PRM ({loss_type})", []).append(out["implicit_prm"])
                print(
                    f"seed {seed} {loss_type}: " + ", ".join(f"{k} {out['implicit_prm'][k]:.3f}" for k in STEP_METRICS)
                )
            arms.setdefault("log pi_ref (control)", []).append(out["log_pi_ref"])
            arms.setdefault("random scorer", []).append(out["random"])
            arms.setdefault("baselines", []).append(out["baselines"])
    print(
        f"\nImplicit PRM on modular addition with bug cells: {args.num_labels} outcome labels, beta {args.beta}, "
        f"{args.epochs:g} epochs, seeds {args.seeds}; mean ± std over seeds.\n"
    )
    print("| scorer | " + " | ".join(STEP_METRICS.values()) + " |")
    print("|---" * (len(STEP_METRICS) + 1) + "|")
    for name, runs in arms.items():
        if name != "baselines":
            print(f"| {name} | " + " | ".join(_fmt([r[k] for r in runs]) for k in STEP_METRICS) + " |")
    print("\n| selection baseline | accuracy |\n|---|---|")
    for key, label in BASELINES.items():
        print(f"| {label} | {_fmt([r[key] for r in arms['baselines']])} |")
    print(f"\nWall time: {time.perf_counter() - start:.0f} s ({torch.get_num_threads()} thread(s)).")


if __name__ == "__main__":
    main()
