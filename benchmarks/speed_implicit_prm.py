"""Step time and peak memory of `ImplicitPRMTrainer` against TRL's `KTOTrainer`: LoRA, same model, data, seed, order.

    python benchmarks/speed_implicit_prm.py                              # CPU, a 4-layer Qwen2 built offline
    python benchmarks/speed_implicit_prm.py --device cuda --bf16 --batch_size 16 --seq_len 1024 --steps 30
    python benchmarks/speed_implicit_prm.py --device cuda --bf16 --model /path/to/Qwen3-0.6B --output_json speed.json

Both trainers take the same unpaired ``prompt, completion, label`` rows and, under LoRA, use the base model with the
adapter disabled as the reference, so one step of each is a policy forward and backward plus a no-grad reference
forward. The arms:

- ``KTO-apo``: ``KTOTrainer`` with ``loss_type="apo_zero_unpaired"``, which computes no KL term: the same forwards as
  the implicit PRM, so it is the baseline of every ratio.
- ``PRM``: ``ImplicitPRMTrainer`` (``loss_type="ce"``).
- ``KTO``: ``KTOTrainer`` with its default ``loss_type="kto"``, shown for reference: its KL estimate runs two more
  no-grad forwards per step (policy and reference on mismatched prompt/completion pairs), so it is expected to be
  slower than both, and ``--kto_arms apo_zero_unpaired`` leaves it out.

Method, as ``benchmarks/speed_mixce.py`` (model, corpus, timer and table from ``benchmarks/speed_harness.py``):
- Every run (one arm, one repeat) is a fresh ``spawn`` process, the arms alternating within each repeat, so drift of
  the machine hits all arms alike and no allocator or CUDA state carries from one run to the next.
- Step time is ``time.perf_counter`` from ``on_step_begin`` to ``on_step_end`` (both forwards, loss, metrics,
  backward, clipping, optimizer), after ``torch.cuda.synchronize`` on CUDA; the first ``--warmup`` steps of each run
  are dropped and the median over every kept step of every repeat is reported. On CPU the process CPU time per step
  is reported too (steadier than wall time on a shared host), and torch uses one thread unless ``--threads`` says
  otherwise.
- Peak memory, CUDA: ``torch.cuda.max_memory_allocated`` over ``train()``. CPU: peak RSS minus the RSS at the start of
  ``train()`` (``VmHWM`` reset through ``/proc/self/clear_refs``), with glibc's mmap threshold pinned; median over
  repeats.
- Every row is longer than ``--seq_len`` tokens and truncated to exactly ``--seq_len`` (keep the start) by both
  trainers, so no batch is padded. Half the rows are labelled correct, alternating, and all arms read them in order
  (``train_sampling_strategy="sequential"``, KTO's default). Each run records its first batch's shape and scored
  tokens, and the summary fails loudly if the arms did not train on the same tokens.
- LoRA (``--lora_r``, all linear layers, no dropout: ``KTOConfig`` disables dropout, so the PRM gets none either).
  Both trainers log their metrics inside the step (KTO with about twenty ``.item()`` syncs); that is measured.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import speed_harness as harness

harness.pin_speed_env()

BASELINE = "KTO-apo"
KTO_ARMS = {"apo_zero_unpaired": "KTO-apo", "kto": "KTO"}


def unpaired_rows(num_rows: int, seq_len: int, seed: int = 0) -> dict[str, list]:
    """``num_rows`` rows ``prompt, completion, label``: a prompt of ``seq_len // 12`` words (about a quarter of the
    tokens: the pseudo-words average about three tokens) and a completion of ``seq_len`` words. Every word is at least
    one token, so with ``max_length=seq_len`` every row is truncated to exactly ``seq_len`` tokens. Labels alternate
    True, False."""
    rng = random.Random(seed)
    words = [w for s in harness.synthetic_corpus(num_rows * seq_len // 6 + 100, seed=seed) for w in s.split()]

    def text(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    return {
        "prompt": [text(seq_len // 12) for _ in range(num_rows)],
        "completion": [" " + text(seq_len) for _ in range(num_rows)],
        "label": [i % 2 == 0 for i in range(num_rows)],
    }


def _first_batch(trainer: Any) -> dict[str, int]:
    """Shape and scored tokens of the first training batch: the arms must agree on both for the comparison to hold."""
    batch = next(iter(trainer.get_train_dataloader()))
    scored = (batch["labels"] != -100).sum() if "labels" in batch else batch["completion_mask"][:, 1:].sum()
    return {"rows": batch["input_ids"].shape[0], "tokens": batch["input_ids"].shape[1], "scored": int(scored)}


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import datasets
    from trl import KTOConfig, KTOTrainer

    from trl_likelihood import ImplicitPRMConfig, ImplicitPRMTrainer

    harness.start_run(opts)
    dataset = datasets.Dataset.from_dict(
        unpaired_rows(harness.total_steps(opts) * opts["batch_size"], opts["seq_len"])
    )
    common = harness.training_args(arm, opts, max_length=opts["seq_len"], train_sampling_strategy="sequential")
    lora = harness.lora_config(opts["lora_r"])
    if arm == "PRM":
        args = ImplicitPRMConfig(beta=opts["beta"], **common)
        trainer = ImplicitPRMTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
    else:
        loss_type = next(k for k, v in KTO_ARMS.items() if v == arm)
        args = KTOConfig(loss_type=loss_type, beta=opts["beta"], **common)
        trainer = KTOTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
    first_batch = _first_batch(trainer)
    return harness.timed_train(trainer, arm, opts)[0] | {"first_batch": first_batch}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.speed_parser(__doc__)
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank on every linear layer (alpha = 2r).")
    parser.add_argument(
        "--beta", type=float, default=0.1, help="Both trainers' beta (the cost does not depend on it)."
    )
    parser.add_argument(
        "--kto_arms",
        default="apo_zero_unpaired,kto",
        help="KTO loss types to run, comma-separated; apo_zero_unpaired (no KL term) is the baseline and always runs.",
    )
    harness.add_checkpointing_and_json(parser)
    args = harness.check_speed_args(parser, parser.parse_args(argv), positive=("lora_r",))
    unknown = set(args.kto_arms.split(",")) - set(KTO_ARMS)
    if unknown:
        parser.error(f"--kto_arms: unknown loss types {sorted(unknown)}; expected some of {sorted(KTO_ARMS)}.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    arms = [BASELINE, "PRM"] + [KTO_ARMS[k] for k in args.kto_arms.split(",") if KTO_ARMS[k] != BASELINE]
    started = time.perf_counter()
    runs = harness.time_arms(run_arm, arms, args, args.seq_len, "speed_implicit_prm")
    harness.check_same_work(runs)
    summary = harness.summarize(runs, arms, BASELINE)
    table = harness.markdown_table(summary, cpu_time=args.device == "cpu", arms=arms, baseline=BASELINE)
    settings = harness.settings_lines(args, runs, f"seq_len={args.seq_len}")
    return harness.report(args, runs, summary, [*settings, table], started)


if __name__ == "__main__":
    main()
