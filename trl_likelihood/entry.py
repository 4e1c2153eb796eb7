"""The ``trl-likelihood`` console script's front door: help, version and dispatch, with no heavy import.

``trl-likelihood --help`` answers at once; torch, TRL and the trainers load only when a method or the demo runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

PROG = "trl-likelihood"

# The one recipe for several processes on a CPU-only machine, word for word in the README, in --help, in cli.py's
# docstring and in each trainers/<script>.py (tests/test_entry.py), and run as written by tests/test_distributed.py.
# --multi_gpu: without it accelerate starts a single process; --use_cpu goes to the script (accelerate's own --cpu
# also starts one process); the ranks then talk over gloo.
CPU_RECIPE = (
    "accelerate launch --multi_gpu --num_processes 2 --mixed_precision no trainers/{script}.py --config {script}.yaml "
    "--use_cpu"
)


def cpu_recipe(script: str = "mixce") -> str:
    """``CPU_RECIPE`` for ``trainers/<script>.py`` (``implicit_prm``, not ``implicit-prm``)."""
    return CPU_RECIPE.format(script=script)


# name -> (one line of help, the `trl` subcommand whose data and flags it takes). The classes are in cli.METHODS.
METHOD_HELP: dict[str, tuple[str, str]] = {
    "mixce": (
        "MixCE: forward + self-reinforced reverse cross-entropy (--eta); language-modeling or prompt-completion data.",
        "sft",
    ),
    "implicit-prm": (
        "Implicit PRM: outcome reward beta*log(pi/pi_ref) on correct/incorrect labels, step rewards for free "
        "(--beta, --loss_type ce|dpo); prompt+completion+label or prompt+chosen+rejected data.",
        "kto",
    ),
    "ddo": (
        "DDO: the likelihood ratio to a frozen reference as a GAN discriminator, real data vs reference samples, "
        "self-play rounds (--alpha, --beta, --num_rounds); language-modeling or prompt-completion data.",
        "sft",
    ),
    "sequencematch": (
        "SequenceMatch: a <bkspc> action, logits as soft Q-values, chi^2-mixture occupancy matching on data and "
        "on-policy rollouts (--noise_prob, --chi2_coef, --sm_weight); language-modeling or prompt-completion data.",
        "sft",
    ),
    "stepwise-prm": (
        "Stepwise (explicit) PRM: a token classifier predicting each step's label at the step's last token, as TRL's "
        "former PRMTrainer (--step_separator, --train_on_last_step_only); prompt+completions+labels stepwise data.",
        "reward",
    ),
}


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a beyond-maximum-likelihood objective as a drop-in TRL trainer.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps each command on one line, as written
        epilog=(
            f"Run '{PROG} METHOD --help' for a method's flags (its own first, then TRL's, as in 'trl sft').\n\n"
            "Example:\n"
            f"  {PROG} mixce --model_name_or_path Qwen/Qwen2-0.5B --dataset_name trl-lib/Capybara --eta 0.5\n\n"
            "Several processes (GPUs):\n"
            "  accelerate launch --num_processes N -m trl_likelihood.cli METHOD --config cfg.yaml\n"
            "Two processes on a CPU-only machine (trainers/ is in a source checkout):\n"
            f"  {cpu_recipe()}"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="methods", dest="method", metavar="METHOD")
    subparsers.add_parser(
        "demo", help="Each method vs continued MLE on an embedded known-truth task (offline, CPU).", add_help=False
    )
    subparsers.add_parser(
        "evaluate-prm",
        help="ProcessBench-style first-error F1 and step AUROC of a trained PRM on stepwise data.",
        add_help=False,
    )
    subparsers.add_parser(
        "score",
        help="Score prompts with N candidates by a trained PRM: step rewards, best-of-N, weighted vote (resumable; "
        "across processes under accelerate launch).",
        add_help=False,
    )
    for name, (text, replaces) in METHOD_HELP.items():
        # add_help=False: the method's own TrlParser answers `METHOD --help` with the full list of flags.
        subparsers.add_parser(name, help=f"{text} Replaces 'trl {replaces}'.", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trl-likelihood``; returns the exit status (2 for a bad argument, config or dataset)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "evaluate-prm":
        from .prm_cli import main as evaluate_prm_main

        return evaluate_prm_main(argv[1:])
    if argv and argv[0] == "score":
        from .prm_cli import score_main

        return score_main(argv[1:])
    if argv and argv[0] in METHOD_HELP:
        from .cli import run_method

        return run_method(argv[0], argv[1:])
    top = top_parser()
    top.parse_args(argv)  # --help, --version and unknown methods exit here
    top.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
