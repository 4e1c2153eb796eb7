"""The ``trl-likelihood`` console script's front door: help, version and dispatch, with no heavy import.

``trl-likelihood --help`` answers at once; torch, TRL and the trainers load only when a method or the demo runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .methods import METHODS, PROG, cpu_recipe


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
    for method in METHODS.values():
        # add_help=False: the method's own TrlParser answers `METHOD --help` with the full list of flags.
        subparsers.add_parser(method.name, help=f"{method.help} Replaces 'trl {method.replaces}'.", add_help=False)
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
    if argv and argv[0] in METHODS:
        from .cli import run_method

        return run_method(argv[0], argv[1:])
    top = top_parser()
    top.parse_args(argv)  # --help, --version and unknown methods exit here
    top.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
