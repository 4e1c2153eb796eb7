"""``trl-likelihood demo``: each method against its control on a task whose true distribution is known.

Runs offline on CPU in a few minutes: no model or dataset is downloaded. A small base model is trained by MLE on a
lab task, then fine-tuned with the method and, as the control, with more MLE for the same number of steps (for the
implicit PRM, the control scores steps by the MLE model's own likelihood). One table of exact metrics (computable
because the true distribution is known) is printed at the end; the trained models are saved with their model cards
and the plots of ``trl_likelihood.lab.plots`` are written next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

METHODS = ("mixce", "implicit-prm", "ddo", "sequencematch")
Progress = Callable[[str], None]


@dataclass
class Row:
    """One metric of one method against its control; ``relative``: the change in %, else the difference."""

    metric: str
    control: float
    value: float
    relative: bool = True

    def change(self) -> str:
        if not self.relative:
            return f"{self.value - self.control:+.3f}"
        return f"{100 * (self.value / self.control - 1):+.0f}%" if self.control else "n/a"


@dataclass
class Report:
    """A method's part of the demo's output: its arm and control, its rows, and the files it wrote."""

    method: str
    control: str
    description: str
    rows: list[Row]
    files: list[str] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-likelihood demo",
        description="Each method vs continued MLE on an embedded known-truth task (offline, CPU, a few minutes).",
    )
    parser.add_argument("--method", choices=[*METHODS, "all"], default="all", help="which method to run")
    parser.add_argument("--steps", type=int, default=300, help="training steps per arm after the MLE warm start")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task, the model and the data order")
    parser.add_argument("--output_dir", default="trl-likelihood-demo", help="where models, cards and plots go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest for these tiny models")
    return parser


BIGRAM_COLUMNS = {
    "zero_mass": "mass on impossible tokens (lower is better)",
    "invalid_rate": "invalid-sample rate (lower is better)",
    "nll": "held-out NLL/token (lower is better)",
    "js": "per-context JS to the true P (lower is better)",
}


def _save_with_cards(trainers: Iterable[Any]) -> None:
    """Save every arm (weights, tokenizer) with its model card. Ours write the card in ``save_model``; TRL's
    ``SFTTrainer`` (the MLE controls) writes one only with a checkpoint or a push, so it is asked for it."""
    from .trainers.base import CardMixin

    for trainer in trainers:
        trainer.save_model()
        if not isinstance(trainer, CardMixin):
            trainer.create_model_card()


def run_mixce(steps: int, seed: int, output_dir: str, progress: Progress) -> Report:
    """MixCE (eta 0.5 and 0.1) vs MLE on a sparse random bigram: impossible-token mass, invalid samples, NLL, JS."""
    from .lab.experiments import MixCESetup, mixce_vs_mle
    from .lab.plots import plot_mixce

    setup = MixCESetup(seed=seed, warm_steps=max(2 * steps // 3, 1), arm_steps=steps)  # 200 + 300: calibrated
    out_dir = os.path.join(output_dir, "mixce")
    result = mixce_vs_mle(setup, etas=(1.0, 0.5, 0.1), output_dir=out_dir, on_arm=progress)
    _save_with_cards(result["trainers"].values())
    m = result["metrics"]
    plot = plot_mixce([{1.0: m["eta=1"], 0.5: m["eta=0.5"], 0.1: m["eta=0.1"]}], os.path.join(output_dir, "mixce.png"))
    return Report(
        method="MixCE eta=0.1",
        control=f"MLE, {steps} steps",
        description=(
            f"MixCE: sparse random bigram (V={setup.vocab_size}) and a model too small to fit it (hidden "
            f"{setup.hidden_size}); {setup.warm_steps} MLE warm-start steps, then {steps} steps of MixCE or of MLE."
        ),
        rows=[Row(label, m["eta=1"][key], m["eta=0.1"][key]) for key, label in BIGRAM_COLUMNS.items()],
        files=[f"{out_dir}/{{mle,mixce-eta0.5,mixce-eta0.1}} (models and cards)", plot],
    )


def run_implicit_prm(steps: int, seed: int, output_dir: str, progress: Progress) -> Report:
    """Implicit PRM vs the reference's own likelihood on modular addition whose solver has systematic bugs."""
    from .lab.experiments import PRMSetup, implicit_prm_vs_controls
    from .lab.plots import plot_implicit_prm

    setup = PRMSetup(seed=seed, epochs=max(steps, 1) / 300 * 2.0)  # --steps 300 is the calibrated 2 epochs
    out_dir = os.path.join(output_dir, "implicit-prm")
    result = implicit_prm_vs_controls(setup, out_dir, on_stage=progress)
    result["trainer"].save_model()
    plot = plot_implicit_prm([result], os.path.join(output_dir, "implicit-prm.png"))
    prm, control, base = result["implicit_prm"], result["log_pi_ref"], result["baselines"]
    columns = {
        "bug_auroc": "step AUROC on errors pi_ref prefers (higher is better)",
        "step_auroc": "step AUROC, all steps (higher is better)",
        "localisation": "first-error localisation (higher is better)",
        "bon16_min": "best-of-16 accuracy (higher is better)",
    }
    return Report(
        method="implicit PRM",
        control="log pi_ref (the MLE model)",
        description=(
            f"Implicit PRM: chained modular addition whose solver has bug cells pi_ref prefers; {setup.num_labels} "
            f"outcome labels only, beta {setup.beta}. Best-of-16 without a scorer: majority vote "
            f"{base['bon16_majority']:.3f}, random {base['bon16_random']:.3f}, oracle {base['bon16_oracle']:.3f}."
        ),
        rows=[Row(label, control[key], prm[key], relative=False) for key, label in columns.items()],
        files=[f"{out_dir}/implicit-prm-ce (model and card)", plot],
    )


def run_ddo(steps: int, seed: int, output_dir: str, progress: Progress) -> Report:
    """DDO (one round) vs continued MLE from an over-dispersed reference on a fixed-length sparse bigram."""
    from .lab.experiments import DDOSetup, ddo_vs_mle
    from .lab.plots import plot_ddo

    # At --steps 300, the calibrated setting (ALGORITHMS.md 5(g)): a 300-step reference, then one round of 150 steps,
    # half the steps since a DDO step costs about two MLE steps (it samples as many fakes as real rows). The MLE
    # control gets the same number of steps.
    setup = DDOSetup(seed=seed, ref_steps=max(steps, 1), round_steps=max(steps // 2, 1), num_rounds=1)
    out_dir = os.path.join(output_dir, "ddo")
    result = ddo_vs_mle(setup, out_dir, on_stage=progress)
    _save_with_cards(result["trainers"].values())
    m, at = result["metrics"], setup.round_steps
    plot = plot_ddo([m], os.path.join(output_dir, "ddo.png"))
    return Report(
        method="DDO, 1 round",
        control=f"MLE, {at} steps",
        description=(
            f"DDO: fixed-length sparse bigram, reference = {setup.ref_steps} MLE steps with label smoothing "
            f"{setup.label_smoothing:g} (broader than the data); then {at} steps of DDO (alpha {setup.alpha:g}, beta "
            f"{setup.beta:g}) or of MLE. Invalid-sample rate of the reference: {m['reference']['invalid_rate']:.3f}."
        ),
        rows=[Row(label, m[f"mle@{at}"][key], m[f"ddo@{at}"][key]) for key, label in BIGRAM_COLUMNS.items()],
        files=[f"{out_dir}/{{mle,ddo}} (models and cards)", plot],
    )


def run_sequencematch(steps: int, seed: int, output_dir: str, progress: Progress) -> Report:
    """SequenceMatch vs MLE on digit addition: recovery from a forced wrong answer start (BC shown too)."""
    from .lab.backtracking import SMSetup, sequencematch_vs_bc
    from .lab.plots import plot_sequencematch

    # Shorter than the 3-seed study (2,000 + 600 steps): warm starts of 2 x steps, then steps / 2 per arm.
    setup = SMSetup(
        seed=seed, warm_steps=max(2 * steps, 1), arm_steps=max(steps // 2, 1), eval_problems=500, batch_size=64
    )
    out_dir = os.path.join(output_dir, "sequencematch")
    result = sequencematch_vs_bc(setup, out_dir, on_arm=progress)
    _save_with_cards(result["trainers"].values())
    m = result["metrics"]
    plot = plot_sequencematch([m], os.path.join(output_dir, "sequencematch.png"))
    columns = {
        "accuracy": "clean accuracy (higher is better)",
        "recovery_first": "recovery from a wrong 1st digit (higher is better)",
        "recovery_two": "recovery from two wrong digits (higher is better)",
        "bkspc_rate_clean": "<bkspc> use on clean prompts",
    }
    total = setup.warm_steps + setup.arm_steps
    return Report(
        method="SequenceMatch",
        control=f"MLE, {total} steps",
        description=(
            f"SequenceMatch: 2-digit addition (answer least significant digit first); a wrong answer start is forced "
            f"and may be deleted with <bkspc>. {setup.warm_steps} BC steps on data with noise p={setup.noise_prob:g} "
            f"(a wrong digit then <bkspc>), then {setup.arm_steps} SequenceMatch steps; MLE: {total} steps on clean "
            f"data. BC at the same steps: recovery {m['BC']['recovery_first']:.3f} (1st digit), "
            f"{m['BC']['recovery_two']:.3f} (two digits)."
        ),
        rows=[Row(label, m["MLE"][key], m["SM"][key], relative=False) for key, label in columns.items()],
        files=[f"{out_dir}/{{mle,bc,sm}} (models and cards)", plot],
    )


# method -> (runner, number of progress stages it reports)
RUNNERS: dict[str, tuple[Callable[[int, int, str, Progress], Report], int]] = {
    "mixce": (run_mixce, 4),  # warm start, eta 1, 0.5, 0.1
    "implicit-prm": (run_implicit_prm, 2),  # reference, PRM
    "ddo": (run_ddo, 3),  # reference, MLE, DDO
    "sequencematch": (run_sequencematch, 5),  # MLE warm start, BC warm start, MLE, BC, SM
}


def combined_table(reports: list[Report]) -> str:
    """One Markdown table: every method's metrics against its control, with the change."""
    lines = ["| method | control | metric | control value | method value | vs control |"]
    lines.append("|---|---|---|---:|---:|---:|")
    for report in reports:
        for i, row in enumerate(report.rows):
            names = (report.method, report.control) if i == 0 else ("", "")
            cells = [*names, row.metric, f"{row.control:.4g}", f"{row.value:.4g}", row.change()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(reports: list[Report], steps: int, seed: int) -> str:
    """The demo's printed output: the tasks, the combined table, then where the models, cards and plots are."""
    parts = [f"trl-likelihood demo: seed {seed}, {steps} steps per arm. Every value is exact: the truth is known."]
    parts += [f"- {report.description}" for report in reports]
    parts += ["", combined_table(reports), "", "Written:"]
    parts += [f"- {path}" for report in reports for path in report.files]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm

    from .lab.experiments import quiet_logs

    torch.set_num_threads(args.threads)
    quiet_logs()
    methods = METHODS if args.method == "all" else (args.method,)
    reports = []
    with tqdm(total=sum(RUNNERS[m][1] for m in methods), desc="trl-likelihood demo", unit="stage") as bar:
        for method in methods:

            def progress(stage: str, method: str = method) -> None:
                bar.set_postfix_str(f"{method}: {stage} done")
                bar.update(1)

            with contextlib.redirect_stdout(io.StringIO()):  # training logs; the table below is the output
                reports.append(RUNNERS[method][0](args.steps, args.seed, args.output_dir, progress))
    print(render(reports, args.steps, args.seed))
    return 0
