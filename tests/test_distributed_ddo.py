"""DDO's launch script under ``accelerate launch`` with two processes on CPU (gloo), LoRA, against one process.

Every row of the data is the same prompt and completion, so every rank, and the one-process run with the same
per-device batch, sees the same real rows whatever the data order. What the saved runs must show:

- Both ranks trained: each step consumed two per-device batches (the epoch doubles).
- The ranks drew different fakes, and their gradients were averaged. At step 1 the policy is the reference, so every
  logged DDO metric is the identity value whatever the fakes, but the gradient is not: its fake term is
  ``alpha beta / 2 * grad log p(fake)``, which depends on which fakes were drawn. Rank 0 samples with the same seed,
  prompts and weights as the one-process run, so it draws the same fakes. Were rank 1's fakes the same as rank 0's,
  the averaged gradient would be rank 0's, i.e. the one-process run's, and so would the logged ``grad_norm``; the same
  holds if rank 1's gradient were never averaged in. Only two ranks that sampled differently *and* averaged give a
  different norm. The real term is the same on both ranks, so the difference is the fakes'. (Checked by hand with
  ``sampling_seed`` patched to ignore the rank: the two-process run then logs the one-process run's ``grad_norm``,
  losses and log-ratios bit for bit, at both steps.)
- One save (rank 0), one model card, finite metrics, and no rank hangs (each launch runs under a timeout).
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import yaml

from tests.conftest import cpu_args
from tests.test_distributed import REPO, _launch_two, _run, _train_logs

SCRIPT = os.path.join(REPO, "trainers", "ddo.py")
ROWS, BATCH, ALPHA, BETA = 16, 2, 1.0, 0.5
ROW = {"prompt": "the cat runs", "completion": " fast over the red dog and the blue model."}
METRICS = ("loss", "grad_norm", "ddo/real_logratio", "ddo/fake_logratio", "ddo/real_acc", "ddo/fake_acc")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_dir) -> str:
    root = tmp_path_factory.mktemp("distributed_ddo")
    data = root / "train.jsonl"
    data.write_text((json.dumps(ROW) + "\n") * ROWS)
    settings = {
        "model_name_or_path": tiny_model_dir,
        "dataset_name": str(data),
        **cpu_args(max_steps=2, per_device_train_batch_size=BATCH),
        "alpha": ALPHA,
        "beta": BETA,
        "use_peft": True,
        "lora_r": 4,
        "lora_dropout": 0.0,  # no dropout masks: the two runs differ by their fakes only
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def _check_run(logs: list[dict]) -> None:
    assert [h["step"] for h in logs] == [1, 2]
    for h in logs:
        assert all(math.isfinite(h[k]) for k in METRICS), h
        assert 0.0 < h["ddo/sampling_time_share"] <= 1.0
        assert h["ddo/round"] == 1 and h["ddo/fake_length"] > 0 and h["ddo/real_length"] > 0
    identity = (1 + ALPHA) * math.log(2) / max(ALPHA, 1)
    first = logs[0]
    assert first["loss"] == pytest.approx(identity, abs=1e-6)  # policy == reference at step 1
    assert first["ddo/real_logratio"] == pytest.approx(0.0, abs=1e-5)
    assert first["ddo/fake_logratio"] == pytest.approx(0.0, abs=1e-5)
    assert abs(logs[1]["ddo/real_logratio"]) > 1e-4  # the step-1 update moved the policy away from the reference


def test_ddo_two_processes_on_cpu(config, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run([sys.executable, SCRIPT, "--config", config], one, timeout=180)  # ~15 s each here
    proc = _run(
        _launch_two(SCRIPT, config), two, timeout=180
    )  # under a timeout: a rank waiting forever fails the test

    files = os.listdir(two)
    assert files.count("adapter_model.safetensors") == 1 and files.count("README.md") == 1
    assert "model.safetensors" not in files and not [f for f in files if f.startswith("checkpoint")]
    assert proc.stdout.count("Model saved to") == 1 and proc.stdout.count("Training completed.") == 1  # rank 0 only
    _, front, _ = open(os.path.join(two, "README.md")).read().split("---\n", 2)
    assert "ddo" in yaml.safe_load(front)["tags"]  # one whole card, not two interleaved writes

    logs_one, logs_two = _train_logs(one), _train_logs(two)
    _check_run(logs_one)
    _check_run(logs_two)
    assert [h["epoch"] for h in logs_one] == pytest.approx([BATCH / ROWS, 2 * BATCH / ROWS])
    assert [h["epoch"] for h in logs_two] == pytest.approx([2 * BATCH / ROWS, 4 * BATCH / ROWS])  # 2 batches a step
    # The real rows, the weights and rank 0's fakes are those of the one-process run: only rank 1's own fakes,
    # averaged in, can move the step-1 gradient (same fakes, or no averaging, agree to float rounding, ~1e-7).
    assert logs_two[0]["grad_norm"] != pytest.approx(logs_one[0]["grad_norm"], rel=1e-4)
