"""Sampling speed of `sample_with_backspace` against Transformers' `model.generate(do_sample=True)`.

    python benchmarks/speed_backspace_generation.py                      # CPU, one thread, a 4-layer Qwen2
    python benchmarks/speed_backspace_generation.py --device cuda --batch_size 64 --new_tokens 256

Method:
- One random Qwen2 built from a config (``--hidden``, ``--layers``, ``--vocab``; no download), fp32, eval mode. Its
  last id plays ``<bkspc>``. Prompts are ``--prompt_len`` random tokens, the same for every arm, no padding.
- EOS is disabled in every arm, so every row samples exactly ``--new_tokens`` tokens (actions, for the backspace
  sampler: a ``<bkspc>`` costs one forward step like any token) and tokens/s compare like for like.
- Arms: ``generate`` (plain ancestral sampling: temperature 1, top-k 0, top-p 1, KV cache); ``sample_completions``
  (this package's plain sampler, the same loop without backspaces); ``sample_with_backspace`` on the model as it is
  (a random model almost never picks ``<bkspc>``); the same with ``--bkspc_bias`` added to the ``<bkspc>`` logit, so
  that a large share of the actions are backspaces (the share is reported).
- Arms alternate within each repeat, after ``--warmup`` untimed rounds; the median wall time over ``--repeats`` is
  reported, with the process CPU time (steadier on a shared host). Torch uses ``--threads`` threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable

from speed_harness import timed_call  # also puts the checkout (`trl_likelihood`) first on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from trl_likelihood.generation import sample_completions, sample_with_backspace  # noqa: E402

PAD = 0


def build_model(args: argparse.Namespace) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads // 2,
        max_position_embeddings=args.prompt_len + args.new_tokens + 8,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(args.device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


def with_bkspc_bias(model: Qwen2ForCausalLM, bias: float) -> Qwen2ForCausalLM:
    """``model`` with ``bias`` added to the ``<bkspc>`` (last id) logit: a bias on the output layer, nothing else."""
    vector = torch.zeros(model.config.vocab_size, device=model.device)
    vector[-1] = bias
    model.lm_head.bias = torch.nn.Parameter(vector) if bias else None
    return model


def arms(model: Qwen2ForCausalLM, prompts: torch.Tensor, args: argparse.Namespace) -> dict[str, Callable[[], float]]:
    """Each arm samples ``new_tokens`` per row once and returns the share of ``<bkspc>`` among its actions."""
    bkspc, n = model.config.vocab_size - 1, args.new_tokens

    def generate() -> float:
        model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            max_new_tokens=n,
            min_new_tokens=n,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            eos_token_id=None,
            pad_token_id=PAD,
        )
        return float("nan")

    def plain() -> float:
        sample_completions(model, prompts, n, eos_token_id=None, pad_token_id=PAD, seed=0)
        return float("nan")

    def backspace(bias: float) -> Callable[[], float]:
        def run() -> float:
            with_bkspc_bias(model, bias)
            try:
                out = sample_with_backspace(
                    model, prompts, n, bkspc_token_id=bkspc, eos_token_id=None, pad_token_id=PAD, seed=0
                )
            finally:
                with_bkspc_bias(model, 0.0)
            assert all(len(a) == n for a in out.actions)
            return sum(a.count(bkspc) for a in out.actions) / (n * len(out.actions))

        return run

    return {
        "generate": generate,
        "sample_completions": plain,
        "sample_with_backspace": backspace(0.0),
        f"sample_with_backspace, bkspc bias {args.bkspc_bias:g}": backspace(args.bkspc_bias),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--bkspc_bias", type=float, default=8.0, help="added to the <bkspc> logit in the last arm")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    model = build_model(args)
    prompts = torch.randint(
        1, args.vocab - 1, (args.batch_size, args.prompt_len), generator=torch.Generator().manual_seed(0)
    )
    prompts = prompts.to(args.device)
    runs = arms(model, prompts, args)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    for repeat in range(args.warmup + args.repeats):
        for name, fn in runs.items():
            timing = timed_call(fn, cuda)
            if repeat >= args.warmup:
                results[name].append(timing)
    report(results, args)


def report(results: dict[str, list[tuple[float, float, float]]], args: argparse.Namespace) -> None:
    tokens = args.batch_size * args.new_tokens
    base = statistics.median(w for w, _, _ in results["generate"])
    print(
        f"\n{args.device}, {torch.get_num_threads()} thread(s), Qwen2 hidden {args.hidden}, {args.layers} layers, "
        f"vocab {args.vocab}; batch {args.batch_size}, prompt {args.prompt_len}, {args.new_tokens} new tokens per "
        f"row; median of {args.repeats}\n"
    )
    base_cpu = statistics.median(c for _, c, _ in results["generate"])
    print("| arm | wall s | tokens/s | vs generate | CPU s | tokens/CPU-s | vs generate (CPU) | `<bkspc>` share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        share = statistics.median(s for _, _, s in runs)
        rows[name] = dict(wall_s=wall, cpu_s=cpu, ratio=base / wall, ratio_cpu=base_cpu / cpu, bkspc_share=share)
        share_text = "" if share != share else f"{share:.1%}"  # nan: the arm has no <bkspc>
        print(
            f"| {name} | {wall:.3f} | {tokens / wall:,.0f} | {base / wall:.2f}x "
            f"| {cpu:.3f} | {tokens / cpu:,.0f} | {base_cpu / cpu:.2f}x | {share_text} |"
        )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
