"""The PRM commands: ``trl-likelihood evaluate-prm`` and ``trl-likelihood score``.

``evaluate-prm`` is a ProcessBench-style evaluation of a trained PRM on stepwise-supervision data. It scores every
response's steps, picks the threshold on a dev split (``--dev_split``, or ``--dev_fraction`` of the evaluated split
held out), and prints the accuracy on erroneous and on correct responses, their F1 and the pooled step AUROC as JSON
(also written to ``--output``)::

    trl-likelihood evaluate-prm --model my-prm --dataset_name data.jsonl --dev_fraction 0.2

``score`` scores prompts with N candidate responses (``score_dataset``): step rewards, scores, best-of-N and the
weighted vote per row, to JSON Lines or Parquet, resumable, across processes under ``accelerate launch``::

    accelerate launch --num_processes 8 -m trl_likelihood.entry score --model my-prm --dataset_name cands.jsonl \
        --output scored.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

PROG = "trl-likelihood evaluate-prm"
SCORE_PROG = "trl-likelihood score"


def _prm_and_data_parser(prog: str, description: str, data: str) -> argparse.ArgumentParser:
    """The flags both commands take: the PRM, its scoring settings and the dataset."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", required=True, help="The trained PRM: a local folder or Hub id (adapter or model).")
    parser.add_argument("--reference", default="base", help="The implicit PRM's reference (default: the base).")
    parser.add_argument("--beta", type=float, default=None, help="Implicit PRM: default the trained beta.")
    parser.add_argument("--batch_size", type=int, default=8, help="Responses per forward.")
    parser.add_argument("--dataset_name", required=True, help=f"{data}: a Hub id or a local json/jsonl/parquet.")
    parser.add_argument("--dataset_config", default=None, help="The dataset's configuration name.")
    return parser


def make_parser() -> argparse.ArgumentParser:
    parser = _prm_and_data_parser(PROG, __doc__.split("\n\n")[1], "Stepwise data")
    parser.add_argument("--split", default=None, help="Split to evaluate (default: 'test' if any, else the only one).")
    held_out = parser.add_mutually_exclusive_group(required=True)
    held_out.add_argument("--dev_split", help="Split on which the threshold is picked.")
    held_out.add_argument("--dev_fraction", type=float, help="Share of --split held out (seed 0) to pick it on.")
    held_out.add_argument("--threshold", type=float, help="A step scored below it is wrong (no dev split).")
    parser.add_argument("--output", default=None, help="Also write the scores to this JSON file.")
    return parser


def _splits(args: argparse.Namespace) -> tuple[Any, Any]:
    """The evaluated split and the dev split (``None`` with ``--threshold``)."""
    splits, name = _named_split(args, "evaluate")
    if args.dev_split is not None:
        if args.dev_split not in splits:
            raise ValueError(f"--dev_split {args.dev_split!r} is not a split of {args.dataset_name} ({list(splits)}).")
        return splits[name], splits[args.dev_split]
    if args.dev_fraction is not None:
        if not 0 < args.dev_fraction < 1:
            raise ValueError(f"--dev_fraction must be in (0, 1), got {args.dev_fraction}.")
        parts = splits[name].train_test_split(test_size=args.dev_fraction, seed=0)
        return parts["train"], parts["test"]
    return splits[name], None


def load_scorer(model: str, reference: str, beta: float | None, batch_size: int, device: Any = None) -> Any:
    """``prm_scorer.load_prm`` with the flags each kind takes: an explicit PRM has no reference and no beta."""
    from .prm_scorer import is_token_classifier, load_prm

    implicit = {} if is_token_classifier(model) else {"reference": reference, "beta": beta}
    return load_prm(model, batch_size=batch_size, device=device, **implicit)


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit status: 2 for a bad argument, dataset or model, as the training commands."""
    args = make_parser().parse_args(argv)
    try:
        from .prm_evaluation import evaluate_prm
        from .stepwise_data import validate_stepwise_dataset

        evaluated, dev = _splits(args)
        validate_stepwise_dataset(evaluated, args.split or "the evaluated split")
        if dev is not None:
            validate_stepwise_dataset(dev, "the dev split")
        scorer = load_scorer(args.model, args.reference, args.beta, args.batch_size)
        result = evaluate_prm(scorer, evaluated, dev_dataset=dev, threshold=args.threshold)
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


def make_score_parser() -> argparse.ArgumentParser:
    parser = _prm_and_data_parser(SCORE_PROG, __doc__.split("\n\n")[3], "Rows of prompt + candidates")
    parser.add_argument("--split", default=None, help="Split to score (default: 'test' if any, else the only one).")
    parser.add_argument("--output", required=True, help="Where the scores go: a .jsonl or .parquet file.")
    parser.add_argument("--candidates_column", default="completions", help="The column of the N candidates.")
    parser.add_argument("--chunk_size", type=int, default=256, help="Rows written at a time (what a crash loses).")
    parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
    return parser


def score_main(argv: Sequence[str] | None = None) -> int:
    """``trl-likelihood score``; every process of an ``accelerate launch`` runs it. 2 for bad input."""
    args = make_score_parser().parse_args(argv)
    try:
        from accelerate import PartialState

        from .score_dataset import score_dataset

        dataset = _one_split(args)
        import torch

        # On a machine without an accelerator the processes of `accelerate launch` talk over gloo only when the
        # state is built for the CPU (as the trainers' --use_cpu does); else each runs alone and writes everything.
        state = PartialState(cpu=not torch.cuda.is_available())
        scorer = load_scorer(args.model, args.reference, args.beta, args.batch_size, state.device)
        score_dataset(scorer, dataset, args.output, args.candidates_column, args.chunk_size, not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"{SCORE_PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _one_split(args: argparse.Namespace) -> Any:
    splits, name = _named_split(args, "score")
    return splits[name]


def _named_split(args: argparse.Namespace, purpose: str) -> tuple[Any, str]:
    """The dataset's splits and the one ``--split`` names: by default ``test`` if there is one, else the only one."""
    from .cli import load_data_file_or_hub

    source = SimpleNamespace(
        dataset_name=args.dataset_name, dataset_config=args.dataset_config, dataset_streaming=False
    )
    splits = load_data_file_or_hub(source)
    name = args.split or ("test" if "test" in splits else next(iter(splits)) if len(splits) == 1 else None)
    if name not in splits:
        raise ValueError(f"{args.dataset_name} has splits {list(splits)}; name the one to {purpose} with --split.")
    return splits, name


if __name__ == "__main__":
    sys.exit(main())
