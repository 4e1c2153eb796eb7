"""Distributed equivalence, every trainer: two processes under ``accelerate launch`` (CPU, gloo) with per-device
batch b log the same losses and save the same weights as one process with batch 2b, and no rank hangs when its batch
has no token to score.

The data is read in order (``train_sampling_strategy="sequential"``), so step 1 of the two ranks covers the rows of
step 1 of the one process. Where the trainer takes SFT's pre-tokenized rows, rank 1's first batch scores no token at
all (``tests.reliability.masked_token_rows``): its loss is 0 and its gradient nothing, and the match still holds
only if the loss is normalised by the global token count. Each launch runs under a timeout (``_run``): a rank left
waiting on the other fails the test. DDO samples near-greedily here (``temperature=1e-4``), so its fakes do not
depend on the rank's sampling seed; at temperature 1 the ranks draw different fakes by design (test_distributed_ddo).
Full fine-tuning with SGD: Adam divides by sqrt(v), which turns float noise on gradients that are zero in exact
arithmetic (the key-projection bias, which softmax ignores) into O(lr) weight differences. Tolerances: rtol 1e-5,
atol 1e-5 on logged values (log-ratios are differences of sums, see test_reliability_accumulation), atol 1e-6 on
weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import cpu_args
from tests.reliability import CASES
from tests.test_distributed import REPO, _env, _launch_two, _run, _train_logs

BATCH = 2

pytestmark = pytest.mark.slow


def _config(case, root, tiny_model_dir: str) -> str:
    rows = case.launch_rows() if case.launch_rows else case.dataset().to_list()
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = cpu_args(
        max_steps=2,
        per_device_train_batch_size=BATCH,
        train_sampling_strategy="sequential",
        optim="sgd",
        learning_rate=0.5,
    )
    settings = {"model_name_or_path": tiny_model_dir, "dataset_name": str(data), **training}
    settings.update({**case.config, **case.distributed})
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_with_twice_the_batch(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    config = _config(case, tmp_path, tiny_model_dir)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run([sys.executable, case.script, "--config", config, "--per_device_train_batch_size", str(2 * BATCH)], one)
    proc = _run(_launch_two(case.script, config), two)
    assert proc.stdout.count("Training completed.") == 1  # rank 0 reports once, after both ranks finished

    logs_one, logs_two = _train_logs(one), _train_logs(two)
    assert [h["step"] for h in logs_two] == [1, 2]
    assert [h["epoch"] for h in logs_two] == pytest.approx([h["epoch"] for h in logs_one])  # 2 batches a step
    assert logs_two[1]["loss"] != pytest.approx(logs_two[0]["loss"], abs=1e-4)  # step 1 changed the model
    for key in (*case.loss_metrics, "grad_norm"):
        got, expected = [h[key] for h in logs_two], [h[key] for h in logs_one]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5), key
    weights_one = load_file(os.path.join(one, "model.safetensors"))
    weights_two = load_file(os.path.join(two, "model.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for n, p in weights_one.items():
        torch.testing.assert_close(weights_two[n], p, rtol=1e-5, atol=1e-6, msg=n)


POISON = """
import runpy, sys
import {module} as trainer_module

cls = trainer_module.{name}
compute_loss = cls.compute_loss


def poisoned(self, model, inputs, *args, **kwargs):
    out = compute_loss(self, model, inputs, *args, **kwargs)
    if model.training and self.accelerator.process_index == 1 and self.state.global_step == 1:
        out = (poison(model, out[0]), *out[1:]) if isinstance(out, tuple) else poison(model, out)
    return out


def poison(model, loss):
{poison}


cls.compute_loss = poisoned
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


NAN_LOSS = "    return loss * float('nan')"
# A finite loss whose gradient is NaN: 0 * sqrt(z) at z = 0 adds 0, and its derivative is 0 * inf.
NAN_GRADIENT = """    weight = next(p for p in model.parameters() if p.requires_grad)
    return loss + 0.0 * ((weight - weight.detach()).sum()).sqrt()"""


def _run_poisoned(case, poison: str, tiny_model_dir, tmp_path) -> str:
    """Two processes, rank 1 poisoned at step 2, a checkpoint every step: the run fails with no checkpoint after
    step 1. Returns its output."""
    config = _config(case, tmp_path, tiny_model_dir)
    script = tmp_path / "poisoned.py"
    cls = case.trainer_class
    script.write_text(POISON.format(module=cls.__module__, name=cls.__name__, script=case.script, poison=poison))
    out = tmp_path / "out"
    cmd = [*_launch_two(str(script), config), "--output_dir", str(out), "--max_steps", "3"]
    cmd += ["--save_strategy", "steps", "--save_steps", "1"]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0, logs[-3000:]
    assert sorted(f for f in os.listdir(out) if f.startswith("checkpoint-")) == ["checkpoint-1"]  # none after step 1
    return logs


@pytest.mark.parametrize("name", list(CASES))
def test_nan_on_one_rank_stops_every_rank_before_the_step(name, tiny_model_dir, tmp_path):
    """Rank 1 alone gets a NaN loss at step 2; DDP would average it into every rank's gradient. Both ranks stop with
    the step named, before the optimizer step, within the timeout (no rank waits for the other), and no checkpoint
    is written after step 1."""
    logs = _run_poisoned(CASES[name], NAN_LOSS, tiny_model_dir, tmp_path)
    assert logs.count("FloatingPointError: Non-finite training loss") == 2, logs[-3000:]  # both ranks
    assert "on this process, or non-finite on another) at global step 2:" in logs


def test_nan_gradient_on_one_rank_stops_every_rank_before_the_step(tiny_model_dir, tmp_path):
    """Rank 1's loss stays finite but its gradient is NaN at step 2: after DDP's all-reduce every rank holds the NaN,
    so both stop on the gradient check before the optimizer step."""
    logs = _run_poisoned(CASES["mixce"], NAN_GRADIENT, tiny_model_dir, tmp_path)
    error = "FloatingPointError: Non-finite gradient (the loss was finite) at global step 2:"
    assert logs.count(error) == 2 and "Non-finite training loss" not in logs, logs[
        -3000:
    ]  # both ranks, on the gradient
