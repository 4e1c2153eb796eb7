"""``trl-likelihood demo``: each method against continued MLE on a task whose true distribution is known.

Runs offline on CPU in a few minutes: no model or dataset is downloaded. A small base model is trained by MLE on a
lab task, then fine-tuned with the method and, as the control, with more MLE for the same number of steps; the table
shows exact metrics (computable because the true distribution is known) and the trained models are saved with their
model cards.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

METHODS = ("mixce", "implicit-prm")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-likelihood demo",
        description="Each method vs continued MLE on an embedded known-truth task (offline, CPU, a few minutes).",
    )
    parser.add_argument("--method", choices=[*METHODS, "all"], default="all", help="which method to run")
    parser.add_argument("--steps", type=int, default=300, help="training steps per arm after the MLE warm start")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task, the model and the data order")
    parser.add_argument("--output_dir", default="trl-likelihood-demo", help="where models, cards and results go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest for these tiny models")
    return parser


def _table(rows: list[tuple[str, dict[str, float]]], columns: dict[str, str], control: str) -> str:
    base = dict(rows)[control]
    head = "| arm | " + " | ".join(columns.values()) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for name, metrics in rows:
        cells = []
        for key in columns:
            value = metrics[key]
            rel = "" if name == control or base[key] == 0 else f" ({100 * (value / base[key] - 1):+.0f}%)"
            cells.append(f"{value:.4g}{rel}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_mixce(steps: int, seed: int, output_dir: str, progress: Callable[[str], None]) -> str:
    """MixCE (eta 0.1) vs MLE on a sparse random bigram: mass on impossible tokens, invalid samples, NLL, JS."""
    from .lab.experiments import MixCESetup, mixce_vs_mle

    setup = MixCESetup(seed=seed, arm_steps=steps)
    result = mixce_vs_mle(setup, etas=(1.0, 0.1), output_dir=os.path.join(output_dir, "mixce"), on_arm=progress)
    for trainer in result["trainers"].values():
        trainer.save_model()  # weights, tokenizer and the model card
    m = result["metrics"]
    rows = [("MLE warm start", m["warm"]), ("MLE (control)", m["eta=1"]), ("MixCE eta=0.1", m["eta=0.1"])]
    columns = {
        "zero_mass": "mass on impossible tokens",
        "invalid_rate": "invalid-sample rate",
        "nll": "held-out NLL/token",
        "js": "per-context JS",
    }
    return (
        f"MixCE vs MLE, sparse random bigram (V={setup.vocab_size}, hidden {setup.hidden_size}), "
        f"{setup.warm_steps} MLE warm-start steps then {steps} steps per arm, seed {seed}. Lower is better in every "
        "column; MixCE trades held-out NLL for less mass on impossible tokens (% vs the control).\n\n"
        + _table(rows, columns, control="MLE (control)")
        + f"\n\nModels and cards: {os.path.join(output_dir, 'mixce')}/{{mle,mixce-eta0.1}}"
    )


def run_implicit_prm(steps: int, seed: int, output_dir: str, progress: Callable[[str], None]) -> str:
    """Implicit PRM vs the reference's own likelihood on modular addition whose solver has systematic bugs."""
    from .lab.experiments import PRMSetup, implicit_prm_vs_controls

    setup = PRMSetup(seed=seed, epochs=max(steps, 1) / 300 * 2.0)  # --steps 300 is the calibrated 2 epochs
    out_dir = os.path.join(output_dir, "implicit-prm")
    result = implicit_prm_vs_controls(setup, out_dir, on_stage=progress)
    result["trainer"].save_model()
    base = result["baselines"]
    rows = [("implicit PRM", result["implicit_prm"]), ("log pi_ref (control)", result["log_pi_ref"]),
            ("random scorer", result["random"])]  # fmt: skip
    columns = {
        "bug_auroc": "step AUROC on errors pi_ref prefers",
        "step_auroc": "step AUROC, all",
        "localisation": "first-error localisation",
        "bon16_min": "best-of-16 accuracy",
    }
    return (
        f"Implicit PRM vs controls, modular addition with bug cells, {setup.num_labels} outcome labels only, "
        f"beta {setup.beta}, seed {seed}. Higher is better; the control scores steps by the reference's own "
        f"likelihood. Best-of-16 baselines: majority vote {base['bon16_majority']:.3f}, random "
        f"{base['bon16_random']:.3f}, oracle {base['bon16_oracle']:.3f}.\n\n"
        + _table(rows, columns, control="log pi_ref (control)")
        + f"\n\nPRM and card: {out_dir}/implicit-prm-ce"
    )


RUNNERS = {"mixce": (run_mixce, 2), "implicit-prm": (run_implicit_prm, 1)}  # method -> (runner, extra stages)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    methods = METHODS if args.method == "all" else (args.method,)
    total = sum(RUNNERS[m][1] + 1 for m in methods)
    reports = []
    with tqdm(total=total, desc="trl-likelihood demo", unit="stage") as bar:
        for method in methods:
            runner = RUNNERS[method][0]

            def progress(stage: str, method: str = method) -> None:
                bar.set_postfix_str(f"{method}: {stage} done")
                bar.update(1)

            reports.append(runner(args.steps, args.seed, args.output_dir, progress))
    print("\n\n".join(reports))
    return 0
