"""Step time and peak memory of `MixCETrainer` against TRL's `SFTTrainer`: same model, data, seed and order.

    python benchmarks/speed_mixce.py                                     # CPU, a 4-layer Qwen2 built offline
    python benchmarks/speed_mixce.py --device cuda --bf16 --batch_size 16 --seq_len 1024 --steps 30
    python benchmarks/speed_mixce.py --device cuda --bf16 --model /path/to/Qwen3-0.6B --output_json speed.json

Method (``benchmarks/speed_harness.py``, which every ``speed_*`` script shares):
- Every run (one arm, one repeat) is a fresh ``spawn`` process, alternating SFT, MixCE, SFT, MixCE, ... so that drift
  of the machine hits both arms alike and no allocator or CUDA state carries from one run to the next.
- Step time is ``time.perf_counter`` from ``on_step_begin`` to ``on_step_end`` (forward, loss, metrics, backward,
  clipping, optimizer), after ``torch.cuda.synchronize`` on CUDA. Batch fetching, dataset preparation and logging
  (``logging_steps`` is past the last step) lie outside. The first ``--warmup`` steps of each run are dropped, and the
  reported figure is the median over every kept step of every repeat of an arm. On CPU the process's CPU time per
  step (``time.process_time``, all threads) is reported too: on a host shared with other jobs it moves far less than
  the wall time. CPU runs use one torch thread unless ``--threads`` says otherwise, for the same reason.
- Peak memory, CUDA: ``torch.cuda.max_memory_allocated`` over ``train()``, reset at its start, so it counts the
  weights, gradients, optimizer states and activations. CPU: peak RSS minus the RSS at the start of ``train()``; the
  peak is ``VmHWM`` reset through ``/proc/self/clear_refs`` at that start, or ``ru_maxrss`` where that reset is not
  allowed. glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that RSS follows the live bytes; the
  median over repeats is reported.
- MixCE's per-step metric gathering (``mixce/forward_nll`` totals, SFT's entropy and accuracy) is inside the step
  and is measured: it is part of what MixCE costs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import speed_harness as harness

harness.pin_speed_env()

ARMS = ("SFT", "MixCE")


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from trl_likelihood import MixCEConfig, MixCETrainer

    harness.start_run(opts)
    dataset = datasets.Dataset.from_dict(
        {"text": harness.documents(harness.total_steps(opts) * opts["batch_size"], opts["seq_len"])}
    )
    common = harness.training_args(arm, opts, max_length=opts["seq_len"])
    if arm == "MixCE":
        trainer = MixCETrainer(model=model, args=MixCEConfig(eta=opts["eta"], **common), train_dataset=dataset)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset)
    return harness.timed_train(trainer, arm, opts)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.speed_parser(__doc__)
    parser.add_argument("--eta", type=float, default=0.5, help="MixCE's eta (the cost does not depend on it).")
    harness.add_checkpointing_and_json(parser)
    return harness.check_speed_args(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    runs = harness.time_arms(run_arm, ARMS, args, args.seq_len, "speed_mixce")
    summary = harness.summarize(runs, ARMS, "SFT")
    table = harness.markdown_table(summary, cpu_time=args.device == "cpu", arms=ARMS, baseline="SFT")
    settings = harness.settings_lines(args, runs, f"seq_len={args.seq_len}")
    return harness.report(args, runs, summary, [*settings, table], started)


if __name__ == "__main__":
    main()
