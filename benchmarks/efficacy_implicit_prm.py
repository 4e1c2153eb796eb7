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
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from studies import mean_std_cell, run_study, setup_from_args  # noqa: E402

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
    return mean_std_cell(values, ".3f", ".3f")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loss_types", nargs="+", default=["ce"], choices=["ce", "dpo"])
    parser.add_argument("--num_labels", type=int, default=3000)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--responses_per_prompt", type=int, default=4, help="dpo pairs responses of one prompt")
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 16], help="best-of-N sizes (the largest is sampled)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default=None)
    return parser.parse_args(argv)


def _best_of_n_curve(out: dict, setup: PRMSetup, ref_dir: str, ns: list[int]) -> dict[str, dict[str, float]]:
    """Best-of-N for every N in ``ns``, on the held-out candidates ``implicit_prm_vs_controls`` scored for N 4, 16."""
    from trl_likelihood.lab import load_reference, run_prm_efficacy
    from trl_likelihood.scoring import ImplicitPRM

    reference, tokenizer = load_reference(ref_dir)
    sep = out["task"].step_separator
    prm = ImplicitPRM(out["trainer"].model, reference, tokenizer, beta=setup.beta, step_separator=sep, batch_size=512)
    curve = run_prm_efficacy(
        out["task"], reference, {"implicit_prm": prm.score}, setup.num_eval, setup.num_prompts, ns
    )
    return {arm: {k: v for k, v in metrics.items() if k.startswith("bon")} for arm, metrics in curve.items()}


def run_seed(seed: int, args: argparse.Namespace, root: str) -> dict[str, dict[str, float]]:
    """One seed through the shared protocol, with best-of-N for every N in ``args.ns``.

    Returns ``{"implicit_prm_<loss>": ..., "log_pi_ref": ..., "random": ..., "baselines": ..., "reference": ...}``.
    """
    run: dict[str, dict[str, float]] = {}
    for loss_type in args.loss_types:
        setup = setup_from_args(PRMSetup, args, seed=seed, loss_type=loss_type)
        out = implicit_prm_vs_controls(setup, f"{root}/seed{seed}")
        controls = {key: out[key] for key in ("log_pi_ref", "random", "baselines", "reference")}
        run |= {f"implicit_prm_{loss_type}": out["implicit_prm"], **controls}
        if sorted(args.ns) != [4, 16]:  # the protocol reads N = 4 and 16; other sizes on the same candidates
            curve = _best_of_n_curve(out, setup, f"{root}/seed{seed}/reference", args.ns)
            run[f"implicit_prm_{loss_type}"] = out["implicit_prm"] | curve["implicit_prm"]
            run |= {key: run[key] | curve[key] for key in ("log_pi_ref", "random", "baselines")}
        print(f"seed {seed} {loss_type}: " + ", ".join(f"{k} {out['implicit_prm'][k]:.3f}" for k in STEP_METRICS))
    return run


def markdown_table(runs: dict[int, dict], args: argparse.Namespace) -> str:
    """Mean ± std over seeds of every scorer's step and best-of-N metrics, then the selection baselines."""
    names = {f"implicit_prm_{loss}": f"implicit PRM ({loss})" for loss in args.loss_types}
    names |= {"log_pi_ref": "log pi_ref (control)", "random": "random scorer"}
    lines = ["| scorer | " + " | ".join(STEP_METRICS.values()) + " |", "|---" * (len(STEP_METRICS) + 1) + "|"]
    for key, name in names.items():
        lines.append(
            f"| {name} | " + " | ".join(_fmt([r[key][m] for r in runs.values()]) for m in STEP_METRICS) + " |"
        )
    lines += ["", "| selection baseline | accuracy |", "|---|---|"]
    for key, label in BASELINES.items():
        lines.append(f"| {label} | {_fmt([r['baselines'][key] for r in runs.values()])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    runs = run_study(run_seed, args, save=False)  # this study writes no results.json
    print(
        f"\nImplicit PRM on modular addition with bug cells: {args.num_labels} outcome labels, beta {args.beta}, "
        f"{args.epochs:g} epochs, seeds {args.seeds}; mean ± std over seeds.\n"
    )
    print(markdown_table(runs, args))
    print(f"\nWall time: {time.perf_counter() - start:.0f} s ({torch.get_num_threads()} thread(s)).")


if __name__ == "__main__":
    main()
