"""Responses per second of ``trl-likelihood score`` with 1 and 2 processes, against a plain loop of forward passes.

    python benchmarks/speed_scoring.py                      # CPU: a 4-layer Qwen2 (h256, vocab 4096) built offline
    python benchmarks/speed_scoring.py --rows 96 --batch_size 16 --output_json benchmarks/results/speed-scoring.json

The PRM is the default speed model (``speed_harness.build_default_model``) scored against a second model of the same
shape and tokenizer, other weights (two forwards per response, as an implicit PRM with a separate reference). Data:
``--rows`` prompts with ``--candidates`` responses of 2-6 steps of 3-30 words, so lengths vary and batches pad.

Arms:
- ``loop``: what one writes by hand: for each response, tokenise prompt + response and run the policy and the
  reference once (batch 1, no step split); in this process.
- ``score-1``: ``python -m trl_likelihood.entry score`` (length-sorted batches of ``--batch_size``, step rewards,
  best-of-N, vote, JSONL written chunk by chunk) in one process.
- ``score-2``: the same under ``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU).

Every process uses ``--threads`` torch threads (default 1), so ``score-2`` has twice the cores of ``score-1``. A
command's start (imports, loading the two models, process group) is taken out by running it twice, on ``--rows`` and on
``--small_rows`` rows: responses per second = the extra responses over the extra seconds. Each figure is the median of
``--repeats`` such pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from speed_harness import ROOT, build_default_model, pin_speed_env, synthetic_corpus


def _rows(count: int, candidates: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = " ".join(synthetic_corpus(2000, seed=seed)).split()

    def text(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    return [
        {
            "prompt": text(rng.randint(5, 20)),
            "completions": [[text(rng.randint(3, 30)) for _ in range(rng.randint(2, 6))] for _ in range(candidates)],
            "answers": [str(rng.randint(0, 3)) for _ in range(candidates)],
        }
        for _ in range(count)
    ]


def _write(rows: list[dict], path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _command_seconds(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
    return time.perf_counter() - start


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _score_rate(processes: int, args: argparse.Namespace, model: str, reference: str, work: str) -> float:
    # Without the harness's fixed glibc mmap threshold (set for peak-memory figures, which this script does not take):
    # the loop runs in this process, started without it, and a fixed threshold makes every logits tensor a fresh
    # mmap (measured: score-1 at 0.60x of the loop with it, sys time 9 s of 30).
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env.update(OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT)
    if processes == 1:
        launcher = [sys.executable, "-m", "trl_likelihood.entry"]
    else:
        launcher = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu"]
        launcher += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
        launcher += ["--dynamo_backend", "no", "--main_process_port", _free_port(), "-m", "trl_likelihood.entry"]
    seconds = {}
    for name in ("small", "big"):
        data = os.path.join(work, f"{name}.jsonl")
        out = os.path.join(work, f"{name}-{processes}.jsonl")
        if os.path.exists(out):
            os.remove(out)
        flags = ["--model", model, "--reference", reference, "--beta", "0.05", "--dataset_name", data]
        flags += ["--output", out, "--batch_size", str(args.batch_size), "--no_progress"]
        seconds[name] = _command_seconds([*launcher, "score", *flags], env)
    return (args.rows - args.small_rows) * args.candidates / (seconds["big"] - seconds["small"])


def _loop_rate(args: argparse.Namespace, model: str, reference: str, rows: list[dict]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model)
    policy, ref = (AutoModelForCausalLM.from_pretrained(m).eval() for m in (model, reference))
    start = time.perf_counter()
    with torch.no_grad():
        for row in rows:
            for steps in row["completions"]:
                ids = tokenizer(row["prompt"] + "\n\n".join(steps), return_tensors="pt")["input_ids"]
                for m in (policy, ref):
                    logits = m(input_ids=ids).logits[0, :-1].float()
                    torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum()
    return len(rows) * args.candidates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--small_rows", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    pin_speed_env()
    from tests.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as work:
        model = build_default_model(os.path.join(work, "policy"), 256)
        reference = build_tiny_model(
            os.path.join(work, "reference"), hidden_size=256, num_layers=4, vocab_size=4096, seed=1,
            corpus=synthetic_corpus(20_000, seed=1),
        )  # fmt: skip
        rows = _rows(args.rows, args.candidates, seed=0)
        _write(rows, os.path.join(work, "big.jsonl"))
        _write(rows[: args.small_rows], os.path.join(work, "small.jsonl"))
        rates: dict[str, list[float]] = {"loop": [], "score-1": [], "score-2": []}
        for _ in range(args.repeats):  # the arms alternate, so drift of a shared machine hits each alike
            rates["loop"].append(_loop_rate(args, model, reference, rows))
            rates["score-1"].append(_score_rate(1, args, model, reference, work))
            rates["score-2"].append(_score_rate(2, args, model, reference, work))
    summary = {arm: statistics.median(values) for arm, values in rates.items()}
    lines = [
        f"{args.rows} prompts x {args.candidates} responses, batch {args.batch_size}, {args.threads} thread(s) per "
        f"process, median of {args.repeats}",
        "",
        "| arm | responses/s | vs loop |",
        "|---|---|---|",
        *(f"| {arm} | {rate:.1f} | {rate / summary['loop']:.2f}x |" for arm, rate in summary.items()),
    ]
    print("\n".join(lines))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump({"settings": vars(args), "rates": rates, "median": summary}, f, indent=2)


if __name__ == "__main__":
    main()
