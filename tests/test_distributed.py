"""The launch script for real: one process with ``python``, two with ``accelerate launch`` on CPU (gloo).

Proof that both ranks trained, from what the run saved: TRL logs ``num_tokens`` gathered over all processes, and every
row of the data has the same length, so after one optimizer step two ranks have seen exactly twice the tokens of one
rank, and twice the fraction of an epoch. A second process that never joined the group, or that trained on its own,
would leave both numbers at their single-process values.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from tests.conftest import cpu_args
from tests.tiny import CORPUS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "trainers", "mixce.py")
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
ROWS, BATCH = 16, 2

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
        "PYTHONPATH": REPO,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model_dir) -> str:
    """A YAML config on a jsonl file whose rows all tokenize to the same length (one sentence, repeated)."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "train.jsonl"
    data.write_text((json.dumps({"text": CORPUS[0]}) + "\n") * ROWS)
    settings = {
        "model_name_or_path": tiny_model_dir,
        "dataset_name": str(data),
        **cpu_args(max_steps=2, per_device_train_batch_size=BATCH),
        "eta": 0.5,
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def _run(cmd: list[str], output_dir: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*cmd, "--output_dir", output_dir], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _first_step(output_dir: str) -> dict:
    state = json.load(open(os.path.join(output_dir, "trainer_state.json")))
    return next(h for h in state["log_history"] if h.get("step") == 1 and "num_tokens" in h)


def _assert_saved_once(output_dir: str, stdout: str) -> None:
    files = os.listdir(output_dir)
    assert files.count("model.safetensors") == 1 and files.count("README.md") == 1
    assert not [f for f in files if f.startswith("checkpoint") or f.endswith(".tmp")]
    assert stdout.count("Model saved to") == 1 and stdout.count("Training completed.") == 1  # rank 0 only
    _, front, _ = open(os.path.join(output_dir, "README.md")).read().split("---\n", 2)
    assert "mixce" in yaml.safe_load(front)["tags"]  # one whole card, not two interleaved writes


@pytest.fixture(scope="module")
def single(config, tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
    out = str(tmp_path_factory.mktemp("single") / "out")
    return out, _run([sys.executable, SCRIPT, "--config", config], out)


def test_single_process_script(single):
    out, proc = single
    _assert_saved_once(out, proc.stdout)
    first = _first_step(out)
    assert first["epoch"] == pytest.approx(BATCH / ROWS)
    assert first["num_tokens"] > 0 and first["num_tokens"] % BATCH == 0


def test_two_processes_on_cpu(config, single, tmp_path):
    out = str(tmp_path / "out")
    launch = [
        ACCELERATE,
        "launch",
        "--multi_gpu",  # torchrun's launcher; with use_cpu the process group is gloo
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        SCRIPT,
        "--config",
        config,
    ]
    proc = _run(launch, out)
    _assert_saved_once(out, proc.stdout)
    one, two = _first_step(single[0]), _first_step(out)
    assert two["num_tokens"] == 2 * one["num_tokens"]  # gathered over both ranks after one step
    assert two["epoch"] == pytest.approx(2 * BATCH / ROWS)  # each step consumed two per-device batches
