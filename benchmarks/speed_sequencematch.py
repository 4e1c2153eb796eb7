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

Method as ``benchmarks/speed_mixce.py`` (model, corpus, timer, summary and table from
``benchmarks/speed_harness.py``): a fresh ``spawn`` process per run, arms alternating within each repeat, median over
the kept steps of every repeat, one torch thread on CPU, peak memory as peak RSS (CPU) or ``max_memory_allocated``
(CUDA) over ``train()``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import speed_harness as harness

harness.pin_speed_env()

ARMS = ("SFT", "BC", "SM")


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from trl_likelihood import SequenceMatchConfig, SequenceMatchTrainer

    harness.start_run(opts)
    num_steps = harness.total_steps(opts)
    dataset = datasets.Dataset.from_dict({"text": harness.documents(num_steps * opts["batch_size"], opts["seq_len"])})
    common = harness.training_args(arm, opts, max_length=opts["seq_len"], train_sampling_strategy="sequential")
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
    refresh: set[int] = set()
    if arm == "SM":  # steps that refilled the buffer: global steps 0, k, 2k, ...
        refresh = {s for s in range(num_steps) if s % opts["refresh_steps"] == 0}
    record, timer = harness.timed_train(trainer, arm, opts, skip=refresh)
    record["refresh_step_ms"] = [1000 * timer.step_s[i] for i in sorted(refresh) if i < len(timer.step_s)]
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.speed_parser(__doc__, repeats=2)
    parser.add_argument("--noise_prob", type=float, default=0.1)
    parser.add_argument("--rollouts_per_step", type=int, default=4)
    parser.add_argument("--rollouts_per_refresh", type=int, default=16)
    parser.add_argument("--refresh_steps", type=int, default=5)
    return harness.check_speed_args(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    runs = harness.time_arms(run_arm, ARMS, args, args.seq_len, "speed_sequencematch")
    summary = harness.summarize(runs, arms=ARMS, baseline="SFT")
    refresh = [ms for r in runs for ms in r["refresh_step_ms"]]
    lines = [
        f"model={args.model or harness.DEFAULT_MODEL} device={runs[0]['device_name']} "
        f"batch={args.batch_size} seq_len={args.seq_len} noise_prob={args.noise_prob} "
        f"rollouts/step={args.rollouts_per_step} rollouts/refresh={args.rollouts_per_refresh} "
        f"(of up to {args.seq_len // 2} actions) every {args.refresh_steps} steps, repeats={args.repeats}",
        harness.markdown_table(summary, cpu_time=args.device == "cpu", arms=ARMS, baseline="SFT"),
    ]
    if refresh:
        lines.append(f"SM refresh step (rollouts sampled): median {statistics.median(refresh):.0f} ms")
    return harness.report(args, runs, summary, lines, started)


if __name__ == "__main__":
    main()
