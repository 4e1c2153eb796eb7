"""Step time and peak memory of `MixCETrainer` against TRL's `SFTTrainer`: same model, data, seed and order.

    python benchmarks/speed_mixce.py                                     # CPU, a 4-layer Qwen2 built offline
    python benchmarks/speed_mixce.py --device cuda --bf16 --batch_size 16 --seq_len 1024 --steps 30
    python benchmarks/speed_mixce.py --device cuda --bf16 --model /path/to/Qwen3-0.6B --output_json speed.json

Method:
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
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `tests.tiny` and `trl_likelihood` from a checkout, also in the spawned workers
    sys.path.insert(0, ROOT)

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    # glibc otherwise raises its mmap threshold as tensors are freed, and the peak RSS of the same run then varies by
    # +-15%; fixed, large tensors are mmapped and unmapped on free, so RSS follows the live bytes (+-0.1 MB).
    "MALLOC_MMAP_THRESHOLD_": "65536",
}.items():
    os.environ.setdefault(_key, _value)

ARMS = ("SFT", "MixCE")
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def synthetic_corpus(num_sentences: int, num_words: int = 4000, seed: int = 0) -> list[str]:
    """Sentences over ``num_words`` pseudo-words with Zipfian frequencies: enough distinct words for a BPE of a few
    thousand tokens (the test corpus has 22 words and saturates near 300)."""
    rng = random.Random(seed)
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words: set[str] = set()
    while len(words) < num_words:
        words.add("".join(rng.choices(syllables, k=rng.randint(1, 4))))
    vocab = sorted(words)
    rng.shuffle(vocab)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    return [" ".join(rng.choices(vocab, weights, k=rng.randint(5, 20))) + "." for _ in range(num_sentences)]


def build_default_model(out_dir: str, seq_len: int) -> str:
    """A Qwen2 of hidden 256, 4 layers, BPE vocab 4096 (about 4.5M parameters), saved to ``out_dir``."""
    from tests.tiny import build_tiny_model

    return build_tiny_model(
        out_dir,
        hidden_size=256,
        num_layers=4,
        vocab_size=4096,
        corpus=synthetic_corpus(20_000, seed=1),
        max_position_embeddings=max(256, seq_len),
    )


def documents(num_docs: int, seq_len: int, seed: int = 0) -> list[str]:
    """``num_docs`` texts of at least ``seq_len`` words: every word is at least one token, so with
    ``max_length=seq_len`` every row is truncated to exactly ``seq_len`` tokens and no batch is padded."""
    sentences = iter(synthetic_corpus(num_docs * (seq_len // 5 + 1), seed=seed))
    docs = []
    for _ in range(num_docs):
        words: list[str] = []
        while len(words) < seq_len:
            words += next(sentences).split()
        docs.append(" ".join(words))
    return docs


def _rss_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _make_callback(cuda: bool) -> Any:
    """A `TrainerCallback` that times each optimizer step and tracks peak memory from the start of ``train()``."""
    import resource

    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_s: list[float] = []
            self.step_cpu_s: list[float] = []  # process CPU time (all threads): steadier than wall on a shared host
            self.base_mb = 0.0
            self.memory_method = ""
            self._t0 = self._c0 = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.base_mb = torch.cuda.memory_allocated() / 2**20
                self.memory_method = "torch.cuda.max_memory_allocated over train()"
                return
            self.base_mb = _rss_mb("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
                self.memory_method = "peak RSS increase over train() (VmHWM reset by /proc/self/clear_refs)"
            except OSError:
                self.memory_method = "peak RSS increase over train() (ru_maxrss of a fresh process)"

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.step_s.append(time.perf_counter() - self._t0)
            self.step_cpu_s.append(time.process_time() - self._c0)

        def peak_mb(self) -> float:
            if cuda:
                return torch.cuda.max_memory_allocated() / 2**20
            if "clear_refs" in self.memory_method:
                return _rss_mb("VmHWM") - self.base_mb
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base_mb  # kB on Linux

    return StepTimer()


def run_arm(arm: str, model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one arm for ``warmup + steps`` steps in this (fresh) process; return its step times and peak memory."""
    import warnings

    import datasets
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer

    from trl_likelihood import MixCEConfig, MixCETrainer

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
        logging_steps=10**9,  # never inside the run: logging stays out of the timed steps
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=opts["gradient_checkpointing"],
    )
    if arm == "MixCE":
        trainer = MixCETrainer(model=model, args=MixCEConfig(eta=opts["eta"], **common), train_dataset=dataset)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset)
    trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training summary dict
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
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def summarize(
    runs: list[dict[str, Any]], arms: Sequence[str] = ARMS, baseline: str = "SFT"
) -> dict[str, dict[str, Any]]:
    """Median step time (wall and CPU) over every kept step of an arm, median peak memory over its repeats, and
    each of them divided by the baseline arm's (shared by the other ``speed_*`` benchmarks)."""
    summary: dict[str, dict[str, Any]] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            "median_step_ms": statistics.median(ms for r in mine for ms in r["step_ms"]),
            "median_step_cpu_ms": statistics.median(ms for r in mine for ms in r["step_cpu_ms"]),
            "peak_mb": statistics.median(r["peak_mb"] for r in mine),
            "per_repeat_step_ms": [statistics.median(r["step_ms"]) for r in mine],
            "per_repeat_peak_mb": [r["peak_mb"] for r in mine],
        }
    base = summary[baseline]
    for arm in arms:
        summary[arm]["step_ratio"] = summary[arm]["median_step_ms"] / base["median_step_ms"]
        summary[arm]["step_cpu_ratio"] = summary[arm]["median_step_cpu_ms"] / base["median_step_cpu_ms"]
        summary[arm]["memory_ratio"] = summary[arm]["peak_mb"] / base["peak_mb"]
    return summary


def markdown_table(
    summary: dict[str, dict[str, Any]], cpu_time: bool, arms: Sequence[str] = ARMS, baseline: str = "SFT"
) -> str:
    """arm, median step, (median CPU time per step,) peak memory, and the ratios to the baseline arm."""
    columns = [("median step (ms)", "median_step_ms", ".1f")]
    if cpu_time:  # on a CPU host shared with other jobs the wall time swings; the process's CPU time much less
        columns.append(("median CPU time / step (ms)", "median_step_cpu_ms", ".1f"))
    columns += [("peak memory (MB)", "peak_mb", ".1f"), (f"step ratio vs {baseline}", "step_ratio", ".3f")]
    if cpu_time:
        columns.append((f"CPU-time ratio vs {baseline}", "step_cpu_ratio", ".3f"))
    columns.append((f"memory ratio vs {baseline}", "memory_ratio", ".3f"))
    rows = ["| arm | " + " | ".join(c[0] for c in columns) + " |", "|---" + "|---:" * len(columns) + "|"]
    for arm in arms:
        rows.append(f"| {arm} | " + " | ".join(format(summary[arm][key], fmt) for _, key, fmt in columns) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Local dir or cached Hub id; default: a Qwen2 built here.")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of each run.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per row; every row is exactly this long.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per arm, alternating SFT, MixCE, SFT, ...")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads; default 1 on CPU (with several, OpenMP threads spin while a busy host preempts "
        "one of them, and wall and CPU time swing several-fold), torch's own on CUDA. 0 keeps torch's default.",
    )
    parser.add_argument("--eta", type=float, default=0.5, help="MixCE's eta (the cost does not depend on it).")
    parser.add_argument(
        "--gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TRL's SFTConfig default is on.",
    )
    parser.add_argument("--output_json", default=None, help="Write the settings, every run and the summary here.")
    args = parser.parse_args(argv)
    if args.bf16 and args.device == "cpu":
        parser.error("--bf16 is for --device cuda; the CPU runs are fp32.")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0.")
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    work_dir = tempfile.mkdtemp(prefix="speed_mixce_")
    try:
        model = args.model or build_default_model(os.path.join(work_dir, "model"), args.seq_len)
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
                    f"repeat {repeat} {arm:>5}: median step {statistics.median(run['step_ms']):.1f} ms "
                    f"(CPU {statistics.median(run['step_cpu_ms']):.1f} ms), peak {run['peak_mb']:.1f} MB, "
                    f"train loss {run['train_loss']:.4f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    summary = summarize(runs)
    elapsed = time.perf_counter() - started
    print()
    print(
        f"model={args.model or 'Qwen2 h256 L4 V4096 (built offline)'} device={runs[0]['device_name']} "
        f"bf16={args.bf16} batch={args.batch_size} seq_len={args.seq_len} steps={args.steps} (+{args.warmup} warmup) "
        f"repeats={args.repeats} grad_ckpt={args.gradient_checkpointing} threads={runs[0]['torch_threads']}"
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
