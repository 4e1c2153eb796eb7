"""What the speed scripts (``speed_*.py``) share, so that each keeps only its method's arms: the model and corpus
built offline, one fresh ``spawn`` process per timed run, the step timer (wall and CPU time, peak memory), the ratio
table and the report. ``speed_mixce.py``'s docstring gives the method.

The scripts import it by name (``python benchmarks/<script>.py`` puts this folder first on ``sys.path``); importing it
puts the checkout first too, so that ``tests.tiny`` and ``trl_likelihood`` resolve there, also in spawned workers.
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
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

T = TypeVar("T")

SPEED_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    # glibc otherwise raises its mmap threshold as tensors are freed, and the peak RSS of the same run then varies by
    # +-15%; fixed, large tensors are mmapped and unmapped on free, so RSS follows the live bytes (+-0.1 MB).
    "MALLOC_MMAP_THRESHOLD_": "65536",
}
DEFAULT_MODEL = "Qwen2 h256 L4 V4096 (built offline)"
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def pin_speed_env() -> None:
    """Offline, quiet, and glibc's mmap threshold fixed. Call before transformers is imported; the spawned runs
    inherit the environment (glibc reads it at process start, so it only acts there)."""
    for key, value in SPEED_ENV.items():
        os.environ.setdefault(key, value)


# ---- speed: model and data


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


# ---- speed: command line


def speed_parser(
    doc: str, steps: int = 10, repeats: int = 3, seq_len: bool = True, batch_help: str = "Rows per step."
) -> argparse.ArgumentParser:
    """The flags of every speed script: model, schedule, sizes, device and threads."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--model", default=None, help=f"Local dir or cached Hub id; default: a {DEFAULT_MODEL}.")
    parser.add_argument("--steps", type=int, default=steps, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps at the start of each run.")
    parser.add_argument("--batch_size", type=int, default=4, help=batch_help)
    if seq_len:
        parser.add_argument("--seq_len", type=int, default=128, help="Tokens per row; every row is exactly this long.")
    parser.add_argument("--repeats", type=int, default=repeats, help="Runs per arm, the arms alternating in each.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads; default 1 on CPU (with several, OpenMP threads spin while a busy host preempts "
        "one of them, and wall and CPU time swing several-fold), torch's own on CUDA. 0 keeps torch's default.",
    )
    return parser


def add_checkpointing_and_json(parser: argparse.ArgumentParser) -> None:
    """``--gradient_checkpointing`` (on, TRL's configs' default, set alike in every arm) and ``--output_json``."""
    parser.add_argument(
        "--gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="The same in every arm; TRL's configs default to on.",
    )
    parser.add_argument("--output_json", default=None, help="Write the settings, every run and the summary here.")


def check_speed_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: Sequence[str] = ()
) -> argparse.Namespace:
    """Reject bf16 on CPU and sizes below 1 (``--steps``, ``--repeats`` and ``positive``); default the threads."""
    if args.bf16 and args.device == "cpu":
        parser.error("--bf16 is for --device cuda; the CPU runs are fp32.")
    names = ["steps", "repeats", *positive]
    if min(getattr(args, name) for name in names) < 1 or args.warmup < 0:
        parser.error(", ".join(f"--{name}" for name in names) + " must be >= 1 and --warmup >= 0.")
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


# ---- speed: one run, in its own process


def _rss_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def step_timer(cuda: bool) -> Any:
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


def timed_call(fn: Callable[[], T], cuda: bool) -> tuple[float, float, T]:
    """``(wall s, process CPU s, fn())``, synchronised before and after on CUDA so that the kernels ``fn`` queued
    count."""
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


def start_run(opts: dict[str, Any]) -> bool:
    """Quiet logs, the device checked and torch's threads set, in a run's fresh process; returns whether it is CUDA."""
    import warnings

    import datasets
    import torch
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)  # `gradient_checkpointing` is renamed in transformers 5
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    cuda = opts["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device.")
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    return cuda


def total_steps(opts: dict[str, Any]) -> int:
    """Optimizer steps of one run: the untimed warmup, then the timed steps."""
    return opts["warmup"] + opts["steps"]


def training_args(arm: str, opts: dict[str, Any], max_length: int, **method: Any) -> dict[str, Any]:
    """The trainer arguments every arm of every speed script shares, plus ``method``'s."""
    return dict(
        output_dir=os.path.join(opts["work_dir"], arm),
        max_steps=total_steps(opts),
        per_device_train_batch_size=opts["batch_size"],
        max_length=max_length,
        learning_rate=1e-4,
        seed=0,
        bf16=opts["bf16"],  # TRL's configs default to bf16=True: set it for every arm
        use_cpu=opts["device"] != "cuda",
        report_to="none",
        save_strategy="no",
        logging_steps=10**9,  # never inside the run: logging stays out of the timed steps
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=opts.get("gradient_checkpointing", False),  # speed_sequencematch has no flag: off
        **method,
    )


def lora_config(r: int) -> Any:
    """LoRA of rank ``r`` (alpha ``2r``) on every linear layer, no dropout (``KTOConfig`` and ``DPOConfig`` disable
    the model's dropout, so no arm gets any)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def timed_train(
    trainer: Any, arm: str, opts: dict[str, Any], callbacks: Sequence[Any] = (), skip: Collection[int] = ()
) -> tuple[dict[str, Any], Any]:
    """Train with the step timer (then ``callbacks``); return the run's record, from the steps after the warmup but
    ``skip``, and the timer (every step)."""
    import torch
    import transformers

    cuda = opts["device"] == "cuda"
    trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training summary dict
    timer = step_timer(cuda)
    for callback in (timer, *callbacks):
        trainer.add_callback(callback)
    output = trainer.train()
    kept = [i for i in range(opts["warmup"], len(timer.step_s)) if i not in skip]
    record = {
        "arm": arm,
        "step_ms": [1000 * timer.step_s[i] for i in kept],
        "step_cpu_ms": [1000 * timer.step_cpu_s[i] for i in kept],
        "peak_mb": timer.peak_mb(),
        "base_mb": timer.base_mb,
        "memory_method": timer.memory_method,
        "train_loss": output.training_loss,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    return record, timer


# ---- speed: every run, and the report


def run_line(run: dict[str, Any], width: int) -> str:
    """One run's medians, printed as it ends."""
    median = statistics.median
    cpu = f"CPU {median(run['step_cpu_ms']):.1f} ms"
    if "sampling_ms" in run:  # speed_ddo: the sampling part of the step
        cpu = f"sampling {median(run['sampling_ms']):.1f} ms; {cpu}"
    line = (
        f"repeat {run['repeat']} {run['arm']:>{width}}: median step {median(run['step_ms']):.1f} ms ({cpu}), "
        f"peak {run['peak_mb']:.1f} MB, train loss {run['train_loss']:.4f}"
    )
    return line + (f", first batch {run['first_batch']}" if "first_batch" in run else "")


def time_arms(
    run_arm: Callable[[str, str, dict[str, Any]], dict[str, Any]],
    arms: Sequence[str],
    args: argparse.Namespace,
    seq_len: int,
    name: str,
) -> list[dict[str, Any]]:
    """``run_arm(arm, model, opts)`` for every repeat of every arm, the arms alternating so that drift of the machine
    hits them alike; each run in a fresh ``spawn`` process (its own peak RSS, a clean CUDA context and allocator).
    Without ``--model``, the default model is built for ``seq_len`` tokens in a temporary folder ``name_*``."""
    work_dir = tempfile.mkdtemp(prefix=f"{name}_")
    try:
        model = args.model or build_default_model(os.path.join(work_dir, "model"), seq_len)
        opts = {k: v for k, v in vars(args).items() if k not in ("model", "output_json")} | {"work_dir": work_dir}
        runs = []
        for repeat in range(args.repeats):
            for arm in arms:
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    run = pool.submit(run_arm, arm, model, opts).result()
                run["repeat"] = repeat
                runs.append(run)
                print(run_line(run, max(map(len, arms))), flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return runs


def check_same_work(runs: list[dict[str, Any]]) -> None:
    """Fail loudly unless every run's first batch (rows, tokens, scored tokens) and adapter size agree: the ratios
    must compare like with like."""
    shapes = {json.dumps(r["first_batch"], sort_keys=True) for r in runs}
    params = {r["trainable_params"] for r in runs}
    if len(shapes) != 1 or len(params) != 1:
        raise RuntimeError(f"The arms did not train on the same batches or adapter: {shapes}, params {params}.")


def arm_medians(runs: list[dict[str, Any]], arm: str, keys: Sequence[str] = ("step_ms", "step_cpu_ms")) -> dict:
    """``median_<key>`` over every kept step of every repeat of ``arm``, its median peak memory over the repeats, and
    the per-repeat figures."""
    mine = [r for r in runs if r["arm"] == arm]
    summary: dict[str, Any] = {f"median_{k}": statistics.median(v for r in mine for v in r[k]) for k in keys}
    summary["peak_mb"] = statistics.median(r["peak_mb"] for r in mine)
    summary["per_repeat_step_ms"] = [statistics.median(r["step_ms"]) for r in mine]
    summary["per_repeat_peak_mb"] = [r["peak_mb"] for r in mine]
    return summary


def summarize(runs: list[dict[str, Any]], arms: Sequence[str], baseline: str) -> dict[str, dict[str, Any]]:
    """Every arm's medians (``arm_medians``), and its step time (wall and CPU) and memory divided by the baseline's."""
    summary = {arm: arm_medians(runs, arm) for arm in arms}
    base = summary[baseline]
    for arm in arms:
        summary[arm]["step_ratio"] = summary[arm]["median_step_ms"] / base["median_step_ms"]
        summary[arm]["step_cpu_ratio"] = summary[arm]["median_step_cpu_ms"] / base["median_step_cpu_ms"]
        summary[arm]["memory_ratio"] = summary[arm]["peak_mb"] / base["peak_mb"]
    return summary


def markdown_table(summary: dict[str, dict[str, Any]], cpu_time: bool, arms: Sequence[str], baseline: str) -> str:
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


def settings_lines(args: argparse.Namespace, runs: list[dict[str, Any]], sizes: str) -> list[str]:
    """The settings a table was measured with (``sizes``: the row sizes, as ``seq_len=128``), and how memory was
    measured."""
    line = (
        f"model={args.model or DEFAULT_MODEL} device={runs[0]['device_name']} bf16={args.bf16} "
        f"batch={args.batch_size} {sizes} steps={args.steps} (+{args.warmup} warmup) repeats={args.repeats} "
        f"grad_ckpt={args.gradient_checkpointing} threads={runs[0]['torch_threads']}"
    )
    if "lora_r" in args:
        line += f" lora_r={args.lora_r} (all-linear, {runs[0]['trainable_params']} trainable params)"
    return [line, f"memory: {runs[0]['memory_method']}"]


def report(
    args: argparse.Namespace, runs: list[dict[str, Any]], summary: dict, lines: Sequence[str], started: float
) -> dict[str, Any]:
    """Print ``lines`` (settings and tables) and the total wall time; write them to ``--output_json`` when given."""
    elapsed = time.perf_counter() - started
    print()
    print("\n".join(lines))
    print(f"total wall time {elapsed:.0f} s")
    result = {"settings": vars(args), "summary": summary, "runs": runs, "wall_s": elapsed}
    if getattr(args, "output_json", None):
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result
