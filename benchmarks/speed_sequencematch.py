"""Step time, whole-run time and peak memory of `SequenceMatchTrainer` against TRL's `SFTTrainer`, in one run.

    python benchmarks/speed_sequencematch.py                             # CPU, a 4-layer Qwen2 built offline
    python benchmarks/speed_sequencematch.py --refresh_steps 20          # the whole run with rarer refreshes
    python benchmarks/speed_sequencematch.py --device cuda --bf16 --batch_size 16 --seq_len 512 --run_steps 200

Arms (all on the same ``text`` rows, truncated to exactly ``--seq_len`` tokens, read in the same order):

Every arm trains ``--run_steps`` steps (default 100); per-step medians are over the steps after ``--warmup``.

- ``SFT``: TRL's ``SFTTrainer``, the baseline.
- ``BC``: ``SequenceMatchTrainer`` with ``sm_weight=0``: MLE on noise-augmented trajectories (``--noise_prob``), all
  decision states from one forward pass with a 4-D attention mask (``states.states_batch``): the cost of the
  ``<bkspc>`` machinery alone, against ``SFT``.
- ``BC8``: BC on the very trajectories an ``SM`` step sees, the ``--batch_size`` data rows plus ``--rollouts_per_step``
  buffer rollouts, all scored as data (the buffer is refilled as ``SM``'s): the same tokens and rows as an ``SM``
  step without the SequenceMatch terms, so ``SM / BC8`` is the cost of the loss itself.
- ``SM``: ``sm_weight=0.5`` with ``--rollouts_per_step`` replay-buffer rollouts per step in the same forward pass,
  the buffer refilled with ``--rollouts_per_refresh`` rollouts (of up to ``seq_len / 2`` actions) every
  ``--refresh_steps`` steps by ``sample_with_backspace``. Its median step (and ``BC8``'s) leaves the refreshing steps
  out (they are reported apart); its whole run counts every step, refreshes included.

Ratios: ``SM / BC8`` per step, ``BC / SFT`` per step, and the whole run, ``SM`` over ``SFT``: the sum of every step's
time over ``--run_steps`` steps (no warmup left out), wall and process CPU time. Method as
``benchmarks/speed_mixce.py`` (model, corpus, timer, summary and table from ``benchmarks/speed_harness.py``): a fresh
``spawn`` process per run, arms alternating within each repeat, median over the kept steps of every repeat, one torch
thread on CPU, peak memory as peak RSS (CPU) or ``max_memory_allocated`` (CUDA) over ``train()``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import speed_harness as harness

harness.pin_speed_env()

ARMS = ("SFT", "BC", "BC8", "SM")


def _bc_on_sm_batches(base: type) -> type:
    """``SequenceMatchTrainer`` that refreshes and draws rollouts as SM does, and scores them as data with BC."""

    class BCOnSMBatches(base):
        def _sm_active(self) -> bool:
            return True  # refresh and draw rollouts at SM's steps

        def trajectory_loss(self, model, data, rollouts, device, with_sm):
            return super().trajectory_loss(model, data + rollouts, [], device, with_sm=False)

    return BCOnSMBatches


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm in this (fresh) process; return its step times (kept and all) and peak memory."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from trl_likelihood import SequenceMatchConfig, SequenceMatchTrainer

    opts = {**opts, "steps": opts["run_steps"] - opts["warmup"]}  # every arm: the same steps, the same load windows
    harness.start_run(opts)
    num_steps = harness.total_steps(opts)
    dataset = datasets.Dataset.from_dict({"text": harness.documents(num_steps * opts["batch_size"], opts["seq_len"])})
    common = harness.training_args(arm, opts, max_length=opts["seq_len"], train_sampling_strategy="sequential")
    if arm == "SFT":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset)
    else:
        config = SequenceMatchConfig(
            noise_prob=opts["noise_prob"],
            sm_weight=0.5 if arm == "SM" else 0.0,
            rollouts_per_step=opts["rollouts_per_step"],
            rollouts_per_refresh=opts["rollouts_per_refresh"],
            replay_refresh_steps=opts["refresh_steps"],
            rollout_max_new_tokens=opts["seq_len"] // 2,
            **common,
        )
        cls = _bc_on_sm_batches(SequenceMatchTrainer) if arm == "BC8" else SequenceMatchTrainer
        trainer = cls(model=model, args=config, train_dataset=dataset)
    refresh: set[int] = set()
    if arm in ("SM", "BC8"):  # steps that refilled the buffer: global steps 0, k, 2k, ...
        refresh = {s for s in range(num_steps) if s % opts["refresh_steps"] == 0}
    record, timer = harness.timed_train(trainer, arm, opts, skip=refresh)
    record["refresh_step_ms"] = [1000 * timer.step_s[i] for i in sorted(refresh) if i < len(timer.step_s)]
    record["run_s"], record["run_cpu_s"] = sum(timer.step_s), sum(timer.step_cpu_s)
    record["run_steps"] = len(timer.step_s)
    return record


def ratios(runs: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The issue's ratios: per step ``SM / BC8`` and ``BC / SFT``; the whole run ``SM / SFT`` (medians over
    repeats)."""

    def whole(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["arm"] == arm)

    def per_step(a: str, b: str) -> dict[str, float]:
        return {
            "wall": summary[a]["median_step_ms"] / summary[b]["median_step_ms"],
            "cpu": summary[a]["median_step_cpu_ms"] / summary[b]["median_step_cpu_ms"],
            "memory": summary[a]["peak_mb"] / summary[b]["peak_mb"],
        }

    return {
        "SM step / BC8 step": per_step("SM", "BC8"),
        "BC step / SFT step": per_step("BC", "SFT"),
        "SM run / SFT run": {
            "wall": whole("SM", "run_s") / whole("SFT", "run_s"),
            "cpu": whole("SM", "run_cpu_s") / whole("SFT", "run_cpu_s"),
            "memory": summary["SM"]["peak_mb"] / summary["SFT"]["peak_mb"],
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.speed_parser(__doc__, repeats=2)
    parser.add_argument("--noise_prob", type=float, default=0.1)
    parser.add_argument("--rollouts_per_step", type=int, default=4)
    parser.add_argument("--rollouts_per_refresh", type=int, default=16)
    parser.add_argument("--refresh_steps", type=int, default=5)
    parser.add_argument("--run_steps", type=int, default=100, help="Steps of every arm's run (--steps is unused).")
    parser.add_argument("--output_json", default=None, help="Write the settings, every run and the summary here.")
    args = harness.check_speed_args(parser, parser.parse_args(argv), positive=("run_steps",))
    if args.run_steps <= args.warmup:
        parser.error("--run_steps must exceed --warmup.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    runs = harness.time_arms(run_arm, ARMS, args, args.seq_len, "speed_sequencematch")
    summary = harness.summarize(runs, arms=ARMS, baseline="SFT")
    summary["ratios"] = ratios(runs, summary)
    refresh = [ms for r in runs if r["arm"] == "SM" for ms in r["refresh_step_ms"]]
    lines = [
        f"model={args.model or harness.DEFAULT_MODEL} device={runs[0]['device_name']} "
        f"threads={runs[0]['torch_threads']} "
        f"batch={args.batch_size} seq_len={args.seq_len} noise_prob={args.noise_prob} "
        f"rollouts/step={args.rollouts_per_step} rollouts/refresh={args.rollouts_per_refresh} "
        f"(of up to {args.seq_len // 2} actions) every {args.refresh_steps} steps; {args.run_steps} steps per arm "
        f"(medians after {args.warmup} warmup steps); repeats={args.repeats}",
        f"memory: {runs[0]['memory_method']}",
        harness.markdown_table(summary, cpu_time=args.device == "cpu", arms=ARMS, baseline="SFT"),
        "",
        "| ratio | wall | CPU time | peak memory |",
        "|---|---:|---:|---:|",
    ]
    for name, value in summary["ratios"].items():
        lines.append(f"| {name} | {value['wall']:.3f} | {value['cpu']:.3f} | {value['memory']:.3f} |")
    if refresh:
        lines.append(f"SM refresh step (rollouts sampled, then the step): median {statistics.median(refresh):.0f} ms")
    return harness.report(args, runs, summary, lines, started)


if __name__ == "__main__":
    main()
