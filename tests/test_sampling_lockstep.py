"""Sampling with ``sync_ranks``: under FSDP every forward is a collective, so two processes must run the same number of
decoding forwards even when one has a shorter budget or finishes first, and each process draws what it would alone.

Two gloo processes; the model's forward all-reduces a counter, as FSDP's parameter gathers do. Rank 0 samples 3
tokens, rank 1 up to 12: without ``sync_ranks`` rank 0 leaves after 3 forwards and rank 1 would wait forever on its
4th (the test runs under a timeout, and the unsynced sampler is not run here for that reason).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.tiny import build_tiny_model
from trl_likelihood.backspace import add_backspace_token
from trl_likelihood.generation import sample_completions, sample_with_backspace

pytestmark = pytest.mark.slow


class CollectiveForward(torch.nn.Module):
    """Wraps a causal LM; every forward all-reduces (a stand-in for FSDP's gathers) and is counted."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.forwards = 0

    def forward(self, **kwargs):
        dist.all_reduce(torch.ones(1))
        self.forwards += 1
        return self.module(**kwargs)


def _worker(rank: int, port: int, model_dir: str, results: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bkspc = add_backspace_token(model, tokenizer)
    budget = 3 if rank == 0 else 12
    prompts = [[5, 6, 7], [8, 9]]
    common = dict(eos_token_id=None, pad_token_id=0, seed=rank)
    alone = sample_completions(model, prompts, budget, **common)
    wrapped = CollectiveForward(model)
    synced = sample_completions(wrapped, prompts, budget, sync_ranks=True, **common)
    plain_forwards = wrapped.forwards
    back_alone = sample_with_backspace(model, prompts, budget, bkspc_token_id=bkspc, **common)
    wrapped.forwards = 0
    back = sample_with_backspace(wrapped, prompts, budget, bkspc_token_id=bkspc, sync_ranks=True, **common)
    results[rank] = {
        "same": alone.rows() == synced.rows() and back_alone.actions == back.actions,
        "forwards": (plain_forwards, wrapped.forwards),
        "lengths": [len(c) for _, c in synced.rows()],
    }
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_sync_ranks_keeps_processes_in_step_and_samples_unchanged(tmp_path):
    model_dir = build_tiny_model(str(tmp_path / "tiny"))
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), model_dir, results), nprocs=2, join=True)
        results = dict(results)
    assert results[0]["same"] and results[1]["same"]  # the flag changes no draw
    assert results[0]["lengths"] == [3, 3] and results[1]["lengths"] == [12, 12]  # each keeps its own budget
    assert results[0]["forwards"] == results[1]["forwards"] == (12, 12)  # rank 0 kept rank 1 company
