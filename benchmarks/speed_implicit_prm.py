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

Method, as ``benchmarks/speed_mixce.py`` (whose model, corpus and timer are reused):
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
import json
import os
import random
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
    markdown_table,
    synthetic_corpus,
)
from benchmarks.speed_mixce import summarize as summarize_ratios  # noqa: E402

BASELINE = "KTO-apo"
KTO_ARMS = {"apo_zero_unpaired": "KTO-apo", "kto": "KTO"}


def unpaired_rows(num_rows: int, seq_len: int, seed: int = 0) -> dict[str, list]:
    """``num_rows`` rows ``prompt, completion, label``: a prompt of ``seq_len // 12`` words (about a quarter of the
    tokens: the pseudo-words average about three tokens) and a completion of ``seq_len`` words. Every word is at least
    one token, so with ``max_length=seq_len`` every row is truncated to exactly ``seq_len`` tokens. Labels alternate
    True, False."""
    rng = random.Random(seed)
    words = [w for s in synthetic_corpus(num_rows * seq_len // 6 + 100, seed=seed) for w in s.split()]

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
    import warnings

    import datasets
    import torch
    import transformers
    from peft import LoraConfig
    from trl import KTOConfig, KTOTrainer

    from trl_likelihood import ImplicitPRMConfig, ImplicitPRMTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)  # `gradient_checkpointing` is renamed in transformers 5
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    cuda = opts["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device.")
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    num_steps = opts["warmup"] + opts["steps"]
    dataset = datasets.Dataset.from_dict(unpaired_rows(num_steps * opts["batch_size"], opts["seq_len"]))
    common = dict(
        output_dir=os.path.join(opts["work_dir"], arm),
        max_steps=num_steps,
        per_device_train_batch_size=opts["batch_size"],
        max_length=opts["seq_len"],
        learning_rate=1e-4,
        seed=0,
        bf16=opts["bf16"],  # KTOConfig and SFTConfig both default to bf16=True: set it for both
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        logging_steps=10**9,  # never inside the run: logging stays out of the timed steps
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=opts["gradient_checkpointing"],
        train_sampling_strategy="sequential",
    )
    lora = LoraConfig(
        r=opts["lora_r"],
        lora_alpha=2 * opts["lora_r"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    if arm == "PRM":
        args = ImplicitPRMConfig(beta=opts["beta"], **common)
        trainer = ImplicitPRMTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
    else:
        loss_type = next(k for k, v in KTO_ARMS.items() if v == arm)
        args = KTOConfig(loss_type=loss_type, beta=opts["beta"], **common)
        trainer = KTOTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
    trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training summary dict
    first_batch = _first_batch(trainer)
    timer = _make_callback(cuda)
    trainer.add_callback(timer)
    result = trainer.train()
    warmup = opts["warmup"]
    return {
        "arm": arm,
        "step_ms": [1000 * s for s in timer.step_s[warmup:]],
        "step_cpu_ms": [1000 * s for s in timer.step_cpu_s[warmup:]],
        "peak_mb": timer.peak_mb(),
        "base_mb": timer.base_mb,
        "memory_method": timer.memory_method,
        "train_loss": result.training_loss,
        "first_batch": first_batch,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def summarize(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, Any]]:
    """Median step time (wall and CPU) over every kept step of an arm, median peak memory over its repeats, and each
    divided by the baseline's (KTO without its KL term)."""
    shapes = {json.dumps(r["first_batch"], sort_keys=True) for r in runs}
    params = {r["trainable_params"] for r in runs}
    if len(shapes) != 1 or len(params) != 1:
        raise RuntimeError(f"The arms did not train on the same batches or adapter: {shapes}, params {params}.")
    return summarize_ratios(runs, arms, BASELINE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Local dir or cached Hub id; default: a Qwen2 built here.")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of each run.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per row; every row is exactly this long.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per arm, the arms alternating in each repeat.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads; default 1 on CPU (a busy host preempts spinning OpenMP threads), torch's own "
        "on CUDA. 0 keeps torch's default.",
    )
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank on every linear layer (alpha = 2r).")
    parser.add_argument(
        "--beta", type=float, default=0.1, help="Both trainers' beta (the cost does not depend on it)."
    )
    parser.add_argument(
        "--kto_arms",
        default="apo_zero_unpaired,kto",
        help="KTO loss types to run, comma-separated; apo_zero_unpaired (no KL term) is the baseline and always runs.",
    )
    parser.add_argument(
        "--gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="The default of both SFTConfig and KTOConfig is on.",
    )
    parser.add_argument("--output_json", default=None, help="Write the settings, every run and the summary here.")
    args = parser.parse_args(argv)
    if args.bf16 and args.device == "cpu":
        parser.error("--bf16 is for --device cuda; the CPU runs are fp32.")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.lora_r < 1:
        parser.error("--steps, --repeats and --lora_r must be >= 1 and --warmup >= 0.")
    unknown = set(args.kto_arms.split(",")) - set(KTO_ARMS)
    if unknown:
        parser.error(f"--kto_arms: unknown loss types {sorted(unknown)}; expected some of {sorted(KTO_ARMS)}.")
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    arms = [BASELINE, "PRM"] + [KTO_ARMS[k] for k in args.kto_arms.split(",") if KTO_ARMS[k] != BASELINE]
    started = time.perf_counter()
    work_dir = tempfile.mkdtemp(prefix="speed_implicit_prm_")
    try:
        model = args.model or build_default_model(os.path.join(work_dir, "model"), args.seq_len)
        opts = {k: v for k, v in vars(args).items() if k not in ("model", "output_json")} | {"work_dir": work_dir}
        runs = []
        for repeat in range(args.repeats):
            for arm in arms:
                # A fresh process per run: its own peak RSS, a clean CUDA context and allocator.
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    run = pool.submit(run_arm, arm, model, opts).result()
                run["repeat"] = repeat
                runs.append(run)
                print(
                    f"repeat {repeat} {arm:>7}: median step {statistics.median(run['step_ms']):.1f} ms "
                    f"(CPU {statistics.median(run['step_cpu_ms']):.1f} ms), peak {run['peak_mb']:.1f} MB, "
                    f"train loss {run['train_loss']:.4f}, first batch {run['first_batch']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    summary = summarize(runs, arms)
    elapsed = time.perf_counter() - started
    print()
    print(
        f"model={args.model or 'Qwen2 h256 L4 V4096 (built offline)'} device={runs[0]['device_name']} "
        f"bf16={args.bf16} batch={args.batch_size} seq_len={args.seq_len} steps={args.steps} (+{args.warmup} warmup) "
        f"repeats={args.repeats} grad_ckpt={args.gradient_checkpointing} threads={runs[0]['torch_threads']} "
        f"lora_r={args.lora_r} (all-linear, {runs[0]['trainable_params']} trainable params)"
    )
    print(f"memory: {runs[0]['memory_method']}")
    print(markdown_table(summary, cpu_time=args.device == "cpu", arms=arms, baseline=BASELINE))
    print(f"total wall time {elapsed:.0f} s")
    report = {"settings": vars(args), "summary": summary, "runs": runs, "wall_s": elapsed}
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
