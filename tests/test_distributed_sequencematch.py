"""SequenceMatch's launch script under ``accelerate launch`` with two processes on CPU (gloo), LoRA.

1. Equivalence: without noise and rollouts the objective is deterministic, so two ranks with batch b, data read in
   order, must train exactly like one process with batch 2b (per-trajectory means averaged over ranks = the mean over
   2b trajectories). Rank 0 alone, or two ranks that never averaged, would train on half the rows.
2. With noise and rollouts every rank samples its own (seeded by rank) and refreshes its own buffer at the same steps:
   the run must finish (no rank waits on the other), save once, and log finite metrics.
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tests.conftest import cpu_args
from tests.test_distributed import REPO, _launch_two, _run, _train_logs
from tests.tiny import CORPUS

SCRIPT = os.path.join(REPO, "trainers", "sequencematch.py")
ROWS, BATCH = 16, 2

pytestmark = pytest.mark.slow


def _config(root, tiny_model_dir: str, **overrides) -> str:
    rows = [{"prompt": CORPUS[i][:12], "completion": CORPUS[i][12:40]} for i in range(ROWS)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {
        "model_name_or_path": tiny_model_dir,
        "dataset_name": str(data),
        **cpu_args(max_steps=2, per_device_train_batch_size=BATCH, train_sampling_strategy="sequential"),
        "use_peft": True,
        "lora_r": 4,
        "lora_dropout": 0.0,
        "sm_weight": 0.5,
        **overrides,
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_two_processes_equal_one_with_twice_the_batch(tiny_model_dir, tmp_path):
    config = _config(tmp_path, tiny_model_dir, noise_prob=0.0, rollouts_per_step=0)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run([sys.executable, SCRIPT, "--config", config, "--per_device_train_batch_size", str(2 * BATCH)], one)
    proc = _run(_launch_two(SCRIPT, config), two, timeout=180)
    assert proc.stdout.count("Model saved to") == 1
    logs_one, logs_two = _train_logs(one), _train_logs(two)
    assert [h["loss"] for h in logs_two] == pytest.approx([h["loss"] for h in logs_one], rel=1e-5)
    assert logs_two[1]["loss"] != pytest.approx(logs_two[0]["loss"], rel=1e-4)  # it trained
    a, b = (
        load_file(os.path.join(one, "adapter_model.safetensors")),
        load_file(os.path.join(two, "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys() and any("trainable_tokens" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_two_processes_with_noise_and_rollouts_finish_and_save_once(tiny_model_dir, tmp_path):
    config = _config(tmp_path, tiny_model_dir, noise_prob=0.3, rollouts_per_refresh=4, rollout_max_new_tokens=8)
    out = str(tmp_path / "two")
    proc = _run(_launch_two(SCRIPT, config), out, timeout=180)  # under a timeout: a waiting rank fails the test
    files = os.listdir(out)
    assert files.count("adapter_model.safetensors") == 1 and files.count("README.md") == 1
    assert proc.stdout.count("Training completed.") == 1
    logs = _train_logs(out)
    assert [h["step"] for h in logs] == [1, 2]
    for h in logs:
        keys = ("loss", "grad_norm", "sequencematch/bc_loss", "sequencematch/chi2", "sequencematch/rollout_reward")
        assert all(math.isfinite(h[k]) for k in keys), h
    assert "sequencematch/rollout_backspace_rate" in logs[0]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok.encode("<bkspc>", add_special_tokens=False)) == 1
