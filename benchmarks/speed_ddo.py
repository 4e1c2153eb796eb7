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

Method, as ``benchmarks/speed_mixce.py`` (model, corpus and timer from ``benchmarks/speed_harness.py``):
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
import random
import statistics
import time
from typing import Any

import speed_harness as harness

harness.pin_speed_env()

ARMS = ("DPO", "DDO")
KEYS = ("step_ms", "step_cpu_ms", "sampling_ms", "sampling_cpu_ms", "optim_ms", "optim_cpu_ms")


def one_token_words(tokenizer: Any, limit: int = 2000) -> list[str]:
    """Words ``w`` of the synthetic corpus for which ``" " + w`` is exactly one token of ``tokenizer``."""
    words = sorted({w for s in harness.synthetic_corpus(5000, seed=1) for w in s.rstrip(".").split()})
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
    from trl_likelihood.trainers import ddo

    calls: list[tuple[float, float, float]] = []
    sample = ddo.sample_completions

    def timed(*args: Any, **kwargs: Any):
        wall, cpu, out = harness.timed_call(lambda: sample(*args, **kwargs), cuda)
        calls.append((wall, cpu, out.completion_mask.sum(1).float().mean().item()))
        return out

    ddo.sample_completions = timed
    return calls


def _sampling_per_step(sampling: list[tuple[float, float, float]]) -> Any:
    """A `TrainerCallback` summing the sampling calls made inside each step (wall and CPU s)."""
    from transformers import TrainerCallback

    class SamplingPerStep(TrainerCallback):
        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self._seen = 0

        def on_step_end(self, args, state, control, **kwargs):
            calls, self._seen = sampling[self._seen :], len(sampling)
            self.wall.append(sum(c[0] for c in calls))
            self.cpu.append(sum(c[1] for c in calls))

    return SamplingPerStep()


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trl_likelihood import DDOConfig, DDOTrainer

    cuda = harness.start_run(opts)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = paired_rows(
        tokenizer, harness.total_steps(opts) * opts["batch_size"], opts["prompt_len"], opts["completion_len"]
    )
    max_length = opts["prompt_len"] + opts["completion_len"] + 8  # room for EOS: nothing is truncated
    common = harness.training_args(arm, opts, max_length=max_length, train_sampling_strategy="sequential")
    lora = harness.lora_config(opts["lora_r"])
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
    first_batch = _first_batch(trainer, arm)
    split = _sampling_per_step(sampling)
    record, _ = harness.timed_train(trainer, arm, opts, callbacks=[split])
    sampling_ms = [1000 * s for s in split.wall[opts["warmup"] :]]
    sampling_cpu_ms = [1000 * s for s in split.cpu[opts["warmup"] :]]
    return record | {
        "sampling_ms": sampling_ms,
        "sampling_cpu_ms": sampling_cpu_ms,
        "optim_ms": [s - f for s, f in zip(record["step_ms"], sampling_ms)],
        "optim_cpu_ms": [s - f for s, f in zip(record["step_cpu_ms"], sampling_cpu_ms)],
        "fake_tokens": statistics.mean(float(c[2]) for c in sampling) if sampling else None,
        "first_batch": first_batch,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians over every kept step of an arm (total, sampling, optimisation; wall and CPU), median peak memory over
    its repeats, and DDO's figures divided by DPO's."""
    harness.check_same_work(runs)
    summary = {arm: harness.arm_medians(runs, arm, KEYS) for arm in ARMS}
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
    parser = harness.speed_parser(
        __doc__, steps=8, repeats=2, seq_len=False, batch_help="Real rows (DDO) or pairs (DPO) per step."
    )
    parser.add_argument("--prompt_len", type=int, default=31, help="Tokens per prompt (exact).")
    parser.add_argument("--completion_len", type=int, default=96, help="Tokens per completion, before EOS (exact).")
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank on every linear layer (alpha = 2r).")
    parser.add_argument("--beta", type=float, default=0.1, help="Both trainers' beta (no effect on the cost).")
    parser.add_argument("--alpha", type=float, default=1.0, help="DDO's alpha (the cost does not depend on it).")
    harness.add_checkpointing_and_json(parser)
    return harness.check_speed_args(
        parser, parser.parse_args(argv), positive=("lora_r", "prompt_len", "completion_len")
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    seq_len = args.prompt_len + args.completion_len + 8
    runs = harness.time_arms(run_arm, ARMS, args, seq_len, "speed_ddo")
    summary = summarize(runs)
    table = markdown_table(summary, cpu_time=args.device == "cpu")
    settings = harness.settings_lines(args, runs, f"prompt_len={args.prompt_len} completion_len={args.completion_len}")
    return harness.report(args, runs, summary, [*settings, table], started)


if __name__ == "__main__":
    main()
