"""The launch scripts for real: one process with ``python``, two with ``accelerate launch`` on CPU (gloo).

Proof that both ranks trained, from what the run saved. MixCE: TRL logs ``num_tokens`` gathered over all processes,
and every row of the data has the same length, so after one optimizer step two ranks have seen exactly twice the
tokens of one rank, and twice the fraction of an epoch. A second process that never joined the group, or that trained
on its own, would leave both numbers at their single-process values.

Implicit PRM (LoRA): the data is read in order, so one step of two ranks with batch ``b`` each covers the same rows as
one step of one process with batch ``2b``, and with gradients averaged over the ranks the two runs must save the same
adapter and log the same losses. Rank 0 alone, or two ranks that never averaged, would train on half the rows.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import cpu_args
from tests.tiny import CORPUS
from trl_likelihood.methods import cpu_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "trainers", "mixce.py")
PRM_SCRIPT = os.path.join(REPO, "trainers", "implicit_prm.py")
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


def _run(cmd: list[str], output_dir: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run to the end within ``timeout`` seconds: a rank left waiting on the other fails the test."""
    proc = subprocess.run(
        [*cmd, "--output_dir", output_dir], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
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


def _launch_two(script: str, config: str) -> list[str]:
    return [
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
        script,
        "--config",
        config,
    ]


def test_two_processes_on_cpu(config, single, tmp_path):
    out = str(tmp_path / "out")
    proc = _run(_launch_two(SCRIPT, config), out)
    _assert_saved_once(out, proc.stdout)
    one, two = _first_step(single[0]), _first_step(out)
    assert two["num_tokens"] == 2 * one["num_tokens"]  # gathered over both ranks after one step
    assert two["epoch"] == pytest.approx(2 * BATCH / ROWS)  # each step consumed two per-device batches


def test_documented_cpu_recipe_trains_on_two_processes(tiny_model_dir, tmp_path):
    """``entry.CPU_RECIPE``, word for word as the README, --help and the scripts print it, from a folder holding
    ``trainers/`` and a user's ``mixce.yaml`` with neither ``use_cpu`` nor ``bf16``: the command line alone must make
    two CPU ranks. Only a free port is added (the default 29500 may be taken by another run)."""
    data = tmp_path / "train.jsonl"
    data.write_text((json.dumps({"text": CORPUS[0]}) + "\n") * ROWS)
    settings = {"model_name_or_path": tiny_model_dir, "dataset_name": str(data), "output_dir": str(tmp_path / "out")}
    settings |= {"max_steps": 2, "per_device_train_batch_size": BATCH, "logging_steps": 1, "report_to": "none"}
    (tmp_path / "mixce.yaml").write_text(yaml.safe_dump(settings | {"save_strategy": "no", "max_length": 64}))
    (tmp_path / "trainers").symlink_to(os.path.join(REPO, "trainers"))
    command = shlex.split(cpu_recipe("mixce"))
    assert command[:2] == ["accelerate", "launch"]
    command = [ACCELERATE, "launch", "--main_process_port", str(_free_port()), *command[2:]]
    proc = subprocess.run(command, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _assert_saved_once(str(tmp_path / "out"), proc.stdout)
    assert _first_step(str(tmp_path / "out"))["epoch"] == pytest.approx(2 * BATCH / ROWS)  # a batch from each rank


@pytest.fixture(scope="module")
def prm_config(tmp_path_factory, tiny_model_dir) -> str:
    """Implicit PRM with LoRA on 8 prompts x (correct, incorrect), read in order so the ranks' rows are known."""
    root = tmp_path_factory.mktemp("distributed_prm")
    rows = [
        {"prompt": CORPUS[i][:12], "completion": CORPUS[i + offset][12:], "label": offset == 0}
        for i in range(ROWS // 2)
        for offset in (0, 50)
    ]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {
        "model_name_or_path": tiny_model_dir,
        "dataset_name": str(data),
        **cpu_args(max_steps=2, per_device_train_batch_size=BATCH, train_sampling_strategy="sequential"),
        "beta": 0.5,
        "use_peft": True,
        "lora_r": 4,
        "lora_dropout": 0.0,  # dropout masks drawn over 2 rows per rank differ from those over 4: no exact match
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def _adapter(output_dir: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(output_dir, "adapter_model.safetensors"))


def _train_logs(output_dir: str) -> list[dict]:
    state = json.load(open(os.path.join(output_dir, "trainer_state.json")))
    return [h for h in state["log_history"] if "loss" in h]


def test_implicit_prm_two_processes_equal_one_with_twice_the_batch(prm_config, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run([sys.executable, PRM_SCRIPT, "--config", prm_config, "--per_device_train_batch_size", str(2 * BATCH)], one)
    proc = _run(_launch_two(PRM_SCRIPT, prm_config), two)

    files = os.listdir(two)
    assert files.count("adapter_model.safetensors") == 1 and files.count("README.md") == 1
    assert "model.safetensors" not in files and not [f for f in files if f.startswith("checkpoint")]
    assert proc.stdout.count("Model saved to") == 1 and proc.stdout.count("Training completed.") == 1  # rank 0 only
    _, front, _ = open(os.path.join(two, "README.md")).read().split("---\n", 2)
    assert "implicit-prm" in yaml.safe_load(front)["tags"]  # one whole card, not two interleaved writes

    logs_one, logs_two = _train_logs(one), _train_logs(two)
    assert [h["epoch"] for h in logs_two] == pytest.approx([2 * BATCH / ROWS, 4 * BATCH / ROWS])  # 2 batches a step
    assert [h["epoch"] for h in logs_two] == pytest.approx([h["epoch"] for h in logs_one])
    # Step 1's norm is of the gradients averaged over the ranks (rank 0's alone differ); step 2 runs after the update
    # they made. On TRL 1.16 the two runs agree to about 1e-7.
    assert logs_two[0]["grad_norm"] == pytest.approx(logs_one[0]["grad_norm"], rel=1e-5)
    assert logs_two[1]["loss"] != pytest.approx(logs_two[0]["loss"], abs=1e-4)  # the update changed the rewards
    for key in ("loss", "grad_norm", "prm/reward_correct", "prm/reward_incorrect"):
        assert logs_two[1][key] == pytest.approx(logs_one[1][key], rel=1e-5, abs=1e-6), key
    weights_one, weights_two = _adapter(one), _adapter(two)
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_two.items():
        torch.testing.assert_close(value, weights_one[name], rtol=1e-5, atol=1e-6, msg=name)
