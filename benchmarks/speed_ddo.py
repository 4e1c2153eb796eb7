"""Step time (sampling and optimisation) and peak memory of `DDOTrainer` against TRL's `DPOTrainer`: LoRA, same sizes.

    python benchmarks/speed_ddo.py                                       # CPU, a 4-layer Qwen2 built offline
    python benchmarks/speed_ddo.py --device cuda --bf16 --batch_size 16 --prompt_len 127 --completion_len 896
    python benchmarks/speed_ddo.py --device cuda --bf16 --model /path/to/Qwen3-0.6B --output_json speed.json

The two trainers see rows of the same sizes. DDO takes ``prompt, completion`` rows and samples one fake per row from
the reference (the base with the adapter disabled) at every step, ``completion_len + 1`` tokens (the longest real
completion with its EOS, DDO's default cap; a randomly initialised model almost never samples EOS earlier, and the
mean fake length is recorded). DPO takes ``prompt, chosen, rejected`` rows with ``chosen`` = the real completion and
``rejected`` = another completion of the same number of tokens. So one optimisation step of each is a policy forward
and backward on ``2 x batch`` rows of ``prompt_len + completion_len + 1`` tokens plus a no-grad reference forward on
the same rows; DDO adds the sampling, with the KV cache, before it.

Method, as ``benchmarks/speed_mixce.py`` (whose model, corpus and timer are reused):
- Every run (one arm, one repeat) is a fresh ``spawn`` process, DPO and DDO alternating, so drift of the machine hits
  both arms alike and no allocator or CUDA state carries from one run to the next.
- Step time is ``time.perf_counter`` from ``on_step_begin`` to ``on_step_end`` (sampling, both forwards, loss,
  metrics, backward, clipping, optimizer), after ``torch.cuda.synchronize`` on CUDA. DDO's sampling time is measured
  inside the step by wrapping its ``sample_completions`` (synchronised on CUDA); its optimisation time is the step
  minus the sampling. The first ``--warmup`` steps of each run are dropped and the median over every kept step of
  every repeat is reported (the medians of the sampling and optimisation parts are taken separately). On CPU the
  process CPU time per step is reported too (steadier than wall time on a shared host), and torch uses one thread
  unless ``--threads`` says otherwise.
- Peak memory, CUDA: ``torch.cuda.max_memory_allocated`` over ``train()``. CPU: peak RSS minus the RSS at the start of
  ``train()`` (``VmHWM`` reset through ``/proc/self/clear_refs``), with glibc's mmap threshold pinned; median over
  repeats.
- Every text is built from words that are one token each, so every prompt is exactly ``--prompt_len`` tokens and every
  completion exactly ``--completion_len`` (plus EOS, which both trainers append): no batch is padded and nothing is
  truncated. Both arms read the rows in order. Each run records its first batch's shape and scored tokens, and the
  summary fails loudly if the arms did not train on the same number of rows and tokens.
- LoRA (``--lora_r``, all linear layers, no dropout; ``DPOConfig`` also disables the model's dropout and the tiny
  model has none). Both trainers compute their logged metrics inside the step; that is measured.
The ratio to compare the algorithms' training cost is the optimisation-only one: DDO's sampling is the price of its
fakes, which DPO gets for free from the dataset (someone sampled the rejected completions offline).
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

from benchmarks.speed_mixce import _make_callback, build_default_model, synthetic_corpus  # noqa: E402  (sets env)

ARMS = ("DPO", "DDO")


def one_token_words(tokenizer: Any, limit: int = 2000) -> list[str]:
    """Words ``w`` of the synthetic corpus for which ``" " + w`` is exactly one token of ``tokenizer``."""
    words = sorted({w for s in synthetic_corpus(5000, seed=1) for w in s.rstrip(".").split()})
    single = [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    if len(single) < 50:
        raise RuntimeError(f"Only {len(single)} one-token words in this tokenizer; pass a model with a larger vocab.")
    return single[:limit]


def paired_rows(tokenizer: Any, num_rows: int, prompt_len: int, completion_len: int, seed: int = 0) -> dict:
    """``prompt``, ``completion`` (= ``chosen``) and ``rejected``: texts of exactly ``prompt_len`` and
    ``completion_len`` tokens (checked), each word a token with its leading space."""
    rng = random.Random(seed)
    words = one_token_words(tokenizer)

    def text(n: int) -> str:
        out = "".join(" " + rng.choice(words) for _ in range(n))
        got = len(tokenizer(out, add_special_tokens=False)["input_ids"])
        if got != n:
            raise RuntimeError(f"A text of {n} one-token words tokenised to {got} tokens.")
        return out

    prompts = [text(prompt_len) for _ in range(num_rows)]
    chosen = [text(completion_len) for _ in range(num_rows)]
    rejected = [text(completion_len) for _ in range(num_rows)]
    return {"prompt": prompts, "completion": chosen, "chosen": chosen, "rejected": rejected}


def _first_batch(trainer: Any, arm: str) -> dict[str, int]:
    """Rows, width and scored tokens of the first batch, as one optimisation step sees it (DDO: real + fake rows)."""
    batch = next(iter(trainer.get_train_dataloader()))
    if arm == "DDO":
        rows, scored = 2 * batch["input_ids"].shape[0], 2 * int((batch["labels"][:, 1:] != -100).sum())
    else:
        rows, scored = batch["input_ids"].shape[0], int(batch["completion_mask"][:, 1:].sum())
    return {"rows": rows, "tokens": batch["input_ids"].shape[1], "scored": scored}


def _time_sampling(cuda: bool) -> list[tuple[float, float, float]]:
    """Wrap DDO's ``sample_completions``; every call appends (wall s, CPU s, mean sampled tokens per row)."""
    import torch

    from trl_likelihood.trainers import ddo

    calls: list[tuple[float, float, float]] = []
    sample = ddo.sample_completions

    def timed(*args: Any, **kwargs: Any):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = sample(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        calls.append((wall, cpu, out.completion_mask.sum(1).float().mean().item()))
        return out

    ddo.sample_completions = timed
    return calls


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import warnings

    import datasets
    import torch
    import transformers
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_likelihood import DDOConfig, DDOTrainer

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
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = paired_rows(tokenizer, num_steps * opts["batch_size"], opts["prompt_len"], opts["completion_len"])
    common = dict(
        output_dir=os.path.join(opts["work_dir"], arm),
        max_steps=num_steps,
        per_device_train_batch_size=opts["batch_size"],
        max_length=opts["prompt_len"] + opts["completion_len"] + 8,  # room for EOS: nothing is truncated
        learning_rate=1e-4,
        seed=0,
        bf16=opts["bf16"],
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
    sampling: list[tuple[float, float, float]] = []
    if arm == "DDO":
        sampling = _time_sampling(cuda)
        dataset = datasets.Dataset.from_dict({k: rows[k] for k in ("prompt", "completion")})
        args = DDOConfig(alpha=opts["alpha"], beta=opts["beta"], **common)
        trainer = DDOTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
    else:
        dataset = datasets.Dataset.from_dict({k: rows[k] for k in ("prompt", "chosen", "rejected")})
        args = DPOConfig(beta=opts["beta"], pad_to_multiple_of=None, **common)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora)
    trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training summary dict
    first_batch = _first_batch(trainer, arm)
    timer = _make_callback(cuda)

    class SamplingPerStep(TrainerCallback):  # the sampling calls made inside each step, summed
        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self._seen = 0

        def on_step_end(self, args, state, control, **kwargs):
            calls, self._seen = sampling[self._seen :], len(sampling)
            self.wall.append(sum(c[0] for c in calls))
            self.cpu.append(sum(c[1] for c in calls))

    split = SamplingPerStep()
    trainer.add_callback(timer)
    trainer.add_callback(split)
    result = trainer.train()
    warmup = opts["warmup"]
    step_ms = [1000 * s for s in timer.step_s[warmup:]]
    step_cpu_ms = [1000 * s for s in timer.step_cpu_s[warmup:]]
    sampling_ms = [1000 * s for s in split.wall[warmup:]]
    sampling_cpu_ms = [1000 * s for s in split.cpu[warmup:]]
    return {
        "arm": arm,
        "step_ms": step_ms,
        "step_cpu_ms": step_cpu_ms,
        "sampling_ms": sampling_ms,
        "sampling_cpu_ms": sampling_cpu_ms,
        "optim_ms": [s - f for s, f in zip(step_ms, sampling_ms)],
        "optim_cpu_ms": [s - f for s, f in zip(step_cpu_ms, sampling_cpu_ms)],
        "fake_tokens": statistics.mean(float(c[2]) for c in sampling) if sampling else None,
        "peak_mb": timer.peak_mb(),
        "base_mb": timer.base_mb,
        "memory_method": timer.memory_method,
        "train_loss": result.training_loss,
        "first_batch": first_batch,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


KEYS = ("step_ms", "step_cpu_ms", "sampling_ms", "sampling_cpu_ms", "optim_ms", "optim_cpu_ms")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians over every kept step of an arm (total, sampling, optimisation; wall and CPU), median peak memory over
    its repeats, and DDO's figures divided by DPO's."""
    shapes = {json.dumps(r["first_batch"], sort_keys=True) for r in runs}
    params = {r["trainable_params"] for r in runs}
    if len(shapes) != 1 or len(params) != 1:
        raise RuntimeError(f"The arms did not train on the same batch sizes or adapter: {shapes}, params {params}.")
    summary: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {f"median_{k}": statistics.median(v for r in mine for v in r[k]) for k in KEYS}
        summary[arm]["peak_mb"] = statistics.median(r["peak_mb"] for r in mine)
        summary[arm]["per_repeat_step_ms"] = [statistics.median(r["step_ms"]) for r in mine]
        summary[arm]["per_repeat_peak_mb"] = [r["peak_mb"] for r in mine]
    ddo, dpo = summary["DDO"], summary["DPO"]
    ddo["sampling_share"] = ddo["median_sampling_ms"] / ddo["median_step_ms"]
    ddo["fake_tokens"] = statistics.mean(r["fake_tokens"] for r in runs if r["arm"] == "DDO")
    ratios = {
        "step_ratio": ("median_step_ms", "median_step_ms"),
        "step_cpu_ratio": ("median_step_cpu_ms", "median_step_cpu_ms"),
        "optim_ratio": ("median_optim_ms", "median_step_ms"),  # DPO's step is all optimisation
        "optim_cpu_ratio": ("median_optim_cpu_ms", "median_step_cpu_ms"),
        "memory_ratio": ("peak_mb", "peak_mb"),
    }
    summary["ratios"] = {name: ddo[a] / dpo[b] for name, (a, b) in ratios.items()}
    return summary


def markdown_table(summary: dict[str, dict[str, Any]], cpu_time: bool) -> str:
    """Per arm: step, sampling and optimisation medians (wall, and CPU time on CPU), peak memory; then DDO / DPO."""
    columns = [
        ("step (ms)", "median_step_ms"),
        ("sampling (ms)", "median_sampling_ms"),
        ("optimisation (ms)", "median_optim_ms"),
    ]
    if cpu_time:
        columns += [
            ("CPU step (ms)", "median_step_cpu_ms"),
            ("CPU sampling (ms)", "median_sampling_cpu_ms"),
            ("CPU optimisation (ms)", "median_optim_cpu_ms"),
        ]
    columns.append(("peak memory (MB)", "peak_mb"))
    rows = ["| arm | " + " | ".join(c[0] for c in columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    for arm in ARMS:
        rows.append(f"| {arm} | " + " | ".join(f"{summary[arm][key]:.1f}" for _, key in columns) + " |")
    r = summary["ratios"]
    lines = [
        "\n".join(rows),
        "",
        "| DDO / DPO | wall | " + ("CPU time |" if cpu_time else ""),
        "|---|---:|" + ("---:|" if cpu_time else ""),
        f"| optimisation only (the fair comparison) | {r['optim_ratio']:.3f} | "
        + (f"{r['optim_cpu_ratio']:.3f} |" if cpu_time else ""),
        f"| total step (with DDO's sampling) | {r['step_ratio']:.3f} | "
        + (f"{r['step_cpu_ratio']:.3f} |" if cpu_time else ""),
        f"| peak memory | {r['memory_ratio']:.3f} | " + ("|" if cpu_time else ""),
        "",
        f"DDO's sampling share of its step: {summary['DDO']['sampling_share']:.3f} "
        f"(mean fake length {summary['DDO']['fake_tokens']:.1f} tokens)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Local dir or cached Hub id; default: a Qwen2 built here.")
    parser.add_argument("--steps", type=int, default=8, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of each run.")
    parser.add_argument("--batch_size", type=int, default=4, help="Real rows (DDO) or pairs (DPO) per step.")
    parser.add_argument("--prompt_len", type=int, default=31, help="Tokens per prompt (exact).")
    parser.add_argument("--completion_len", type=int, default=96, help="Tokens per completion, before EOS (exact).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per arm, alternating DPO, DDO, DPO, ...")
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
    parser.add_argument("--beta", type=float, default=0.1, help="Both trainers' beta (no effect on the cost).")
    parser.add_argument("--alpha", type=float, default=1.0, help="DDO's alpha (the cost does not depend on it).")
    parser.add_argument(
        "--gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Set the same for both arms (SFTConfig's default is on).",
    )
    parser.add_argument("--output_json", default=None, help="Write the settings, every run and the summary here.")
    args = parser.parse_args(argv)
    if args.bf16 and args.device == "cpu":
        parser.error("--bf16 is for --device cuda; the CPU runs are fp32.")
    if min(args.steps, args.repeats, args.lora_r, args.prompt_len, args.completion_len) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats, --lora_r, --prompt_len and --completion_len must be >= 1, --warmup >= 0.")
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    work_dir = tempfile.mkdtemp(prefix="speed_ddo_")
    try:
        seq_len = args.prompt_len + args.completion_len + 8
        model = args.model or build_default_model(os.path.join(work_dir, "model"), seq_len)
        opts = {k: v for k, v in vars(args).items() if k not in ("model", "output_json")} | {"work_dir": work_dir}
        runs = []
        for repeat in range(args.repeats):
            for arm in ARMS:
                # A fresh process per run: its own peak RSS, a clean CUDA context and allocator.
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    run = pool.submit(run_arm, arm, model, opts).result()
                run["repeat"] = repeat
                runs.append(run)
                print(
                    f"repeat {repeat} {arm}: median step {statistics.median(run['step_ms']):.1f} ms "
                    f"(sampling {statistics.median(run['sampling_ms']):.1f} ms; CPU "
                    f"{statistics.median(run['step_cpu_ms']):.1f} ms), peak {run['peak_mb']:.1f} MB, "
                    f"train loss {run['train_loss']:.4f}, first batch {run['first_batch']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    summary = summarize(runs)
    elapsed = time.perf_counter() - started
    print()
    print(
        f"model={args.model or 'Qwen2 h256 L4 V4096 (built offline)'} device={runs[0]['device_name']} "
        f"bf16={args.bf16} batch={args.batch_size} prompt_len={args.prompt_len} completion_len={args.completion_len} "
        f"steps={args.steps} (+{args.warmup} warmup) repeats={args.repeats} grad_ckpt={args.gradient_checkpointing} "
        f"threads={runs[0]['torch_threads']} lora_r={args.lora_r} (all-linear, {runs[0]['trainable_params']} "
        "trainable params)"
    )
    print(f"memory: {runs[0]['memory_method']}")
    print(markdown_table(summary, cpu_time=args.device == "cpu"))
    print(f"total wall time {elapsed:.0f} s")
    report = {"settings": vars(args), "summary": summary, "runs": runs, "wall_s": elapsed}
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
