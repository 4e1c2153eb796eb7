"""Step time and peak memory of `SequenceMatchTrainer` against TRL's `SFTTrainer`: same model, data, seed and order.

    python benchmarks/speed_sequencematch.py                             # CPU, a 4-layer Qwen2 built offline
    python benchmarks/speed_sequencematch.py --device cuda --bf16 --batch_size 16 --seq_len 512 --steps 30

Arms (all on the same ``text`` rows, truncated to exactly ``--seq_len`` tokens, read in the same order):

- ``SFT``: TRL's ``SFTTrainer``, the baseline of every ratio.
- ``BC``: ``SequenceMatchTrainer`` with ``sm_weight=0``: MLE on noise-augmented trajectories (``--noise_prob``), all
  decision states from one forward pass with a 4-D attention mask (``backspace.parallel_states``). This is the cost of
  the ``<bkspc>`` machinery alone.
- ``SM``: ``sm_weight=0.5`` with ``--rollouts_per_step`` replay-buffer rollouts per step in the same forward pass.
  The buffer is refilled every ``--refresh_steps`` steps by sampling with backspace; the steps that refill it are
  timed separately (``refresh step``), the others give the median step.

Method as ``benchmarks/speed_mixce.py`` (its model, corpus, timer, summary and table are reused): a fresh ``spawn``
process per run, arms alternating within each repeat, median over the kept steps of every repeat, one torch thread on
CPU, peak memory as peak RSS (CPU) or ``max_memory_allocated`` (CUDA) over ``train()``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `benchmarks`, `tests.tiny` and `trl_likelihood` from a checkout, also in the workers
    sys.path.insert(0, ROOT)

from benchmarks.speed_mixce import (  # noqa: E402  (sets env)
    _make_callback,
    build_default_model,
    documents,
    markdown_table,
    summarize,
)

ARMS = ("SFT", "BC", "SM")


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import datasets
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer

    from trl_likelihood import SequenceMatchConfig, SequenceMatchTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    cuda = opts["device"] == "cuda"
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    num_steps = opts["warmup"] + opts["steps"]
    dataset = datasets.Dataset.from_dict({"text": documents(num_steps * opts["batch_size"], opts["seq_len"])})
    common = dict(
        output_dir=os.path.join(opts["work_dir"], arm),
        max_steps=num_steps,
        per_device_train_batch_size=opts["batch_size"],
        max_length=opts["seq_len"],
        learning_rate=1e-4,
        seed=0,
        bf16=opts["bf16"],
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        logging_steps=10**9,
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
    )
    if arm == "SFT":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset)
    else:
        config = SequenceMatchConfig(
            noise_prob=opts["noise_prob"],
            sm_weight=0.0 if arm == "BC" else 0.5,
            rollouts_per_step=opts["rollouts_per_step"],
            rollouts_per_refresh=opts["rollouts_per_refresh"],
            replay_refresh_steps=opts["refresh_steps"],
            rollout_max_new_tokens=opts["seq_len"] // 2,
            **common,
        )
        trainer = SequenceMatchTrainer(model=model, args=config, train_dataset=dataset)
    trainer.remove_callback(transformers.PrinterCallback)
    timer = _make_callback(cuda)
    trainer.add_callback(timer)
    trainer.train()
    warmup = opts["warmup"]
    refresh = set()
    if arm == "SM":  # steps that refilled the buffer: global steps 0, k, 2k, ...
        refresh = {s for s in range(num_steps) if s % opts["refresh_steps"] == 0}
    kept = [i for i in range(warmup, num_steps) if i not in refresh]
    return {
        "arm": arm,
        "step_ms": [1000 * timer.step_s[i] for i in kept],
        "step_cpu_ms": [1000 * timer.step_cpu_s[i] for i in kept],
        "refresh_step_ms": [1000 * timer.step_s[i] for i in sorted(refresh) if i < len(timer.step_s)],
        "peak_mb": timer.peak_mb(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Local dir; default: a Qwen2 h256 L4 V4096 built here.")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of each run.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--noise_prob", type=float, default=0.1)
    parser.add_argument("--rollouts_per_step", type=int, default=4)
    parser.add_argument("--rollouts_per_refresh", type=int, default=16)
    parser.add_argument("--refresh_steps", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default 1 on CPU.")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    work_dir = tempfile.mkdtemp(prefix="speed_sequencematch_")
    try:
        model = args.model or build_default_model(os.path.join(work_dir, "model"), args.seq_len)
        opts = {k: v for k, v in vars(args).items() if k != "model"} | {"work_dir": work_dir}
        runs = []
        for repeat in range(args.repeats):
            for arm in ARMS:
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    run = pool.submit(run_arm, arm, model, opts).result()
                runs.append(run)
                print(f"repeat {repeat} {arm:>3}: median step {statistics.median(run['step_ms']):.1f} ms", flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    summary = summarize(runs, arms=ARMS, baseline="SFT")
    refresh = [ms for r in runs for ms in r["refresh_step_ms"]]
    print(
        f"\nmodel={args.model or 'Qwen2 h256 L4 V4096 (built offline)'} device={runs[0]['device_name']} "
        f"batch={args.batch_size} seq_len={args.seq_len} noise_prob={args.noise_prob} "
        f"rollouts/step={args.rollouts_per_step} rollouts/refresh={args.rollouts_per_refresh} "
        f"(of up to {args.seq_len // 2} actions) every {args.refresh_steps} steps, repeats={args.repeats}"
    )
    print(markdown_table(summary, cpu_time=args.device == "cpu", arms=ARMS, baseline="SFT"))
    if refresh:
        print(f"SM refresh step (rollouts sampled): median {statistics.median(refresh):.0f} ms")
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return {"summary": summary, "runs": runs}


if __name__ == "__main__":
    main()
