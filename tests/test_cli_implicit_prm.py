"""``trl-likelihood implicit-prm``: a YAML config with LoRA trains and saves an adapter and a PRM card; bad labels stop
it before training with the column and row named."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import cpu_args
from tests.helpers import read_card
from tests.tiny import CORPUS
from trl_likelihood import cli

BIN = os.path.join(os.path.dirname(sys.executable), "trl-likelihood")
PEFT_FLAGS = ["--use_peft", "--lora_r", "4"]


def _rows() -> list[dict]:
    """8 prompts with one correct and one incorrect response each: usable by ``ce`` and, paired up, by ``dpo``."""
    rows = []
    for i in range(8):
        prompt = CORPUS[i][:12]
        rows.append({"prompt": prompt, "completion": CORPUS[i][12:], "label": True})
        rows.append({"prompt": prompt, "completion": CORPUS[i + 50][12:], "label": False})
    return rows


def _write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def write_config(tmp_path, tiny_model_dir):
    """Write a YAML config like a user's (model, labelled jsonl, fast CPU training) with ``overrides``."""

    def write(rows: list[dict] | None = None, **overrides) -> str:
        config = {
            "model_name_or_path": tiny_model_dir,
            "dataset_name": _write_jsonl(tmp_path / "train.jsonl", _rows() if rows is None else rows),
            "output_dir": str(tmp_path / "out"),
            **cpu_args(max_steps=2),
            "beta": 0.25,
            **overrides,
        }
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return write


def _train_steps(out_dir) -> list[dict]:
    state = json.load(open(os.path.join(out_dir, "trainer_state.json")))
    assert state["global_step"] == 2
    return [h for h in state["log_history"] if "loss" in h]


def test_config_file_trains_an_adapter_with_a_prm_card(write_config, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert cli.main(["implicit-prm", "--config", write_config(), *PEFT_FLAGS]) == 0
    assert f"Model saved to {out}" in capsys.readouterr().out
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "trainer_state.json"} <= files
    assert "model.safetensors" not in files  # the adapter only: the base is the reference
    assert json.load(open(out / "adapter_config.json"))["r"] == 4
    steps = _train_steps(out)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # LoRA B = 0: reward 0 at the first step
    assert all(math.isfinite(h["prm/accuracy"]) and math.isfinite(h["prm/auroc"]) for h in steps)
    assert not any("prm/margin" in h for h in steps)  # a `dpo` metric: the default loss is `ce`
    meta, body = read_card(out)
    assert meta["library_name"] == "peft" and "implicit-prm" in meta["tags"]
    assert "process reward model" in body
    assert "beta = 0.25" in body and "| `beta` | `0.25` |" in body  # the YAML's beta reached the trainer and card
    assert "| `loss_type` | `ce` |" in body
    assert "adapter disabled" in body  # the reference is the base model, and the card says so
    assert os.path.dirname(tiny_model_dir) not in open(out / "README.md").read()  # no local path leaks


def test_dpo_loss_from_unpaired_data(write_config, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["implicit-prm", "--config", write_config(), *PEFT_FLAGS, "--loss_type", "dpo"]) == 0
    steps = _train_steps(out)
    # every correct x incorrect pair of a prompt: 8 pairs here, so each step holds pairs and logs their margin
    assert all(math.isfinite(h["prm/margin"]) and math.isfinite(h["prm/accuracy"]) for h in steps)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert "| `loss_type` | `dpo` |" in read_card(out)[1]
    assert "adapter_model.safetensors" in os.listdir(out)


@pytest.mark.parametrize("bad", ["yes", 2, None], ids=["text", "two", "null"])
def test_bad_label_is_a_clear_error_before_training(write_config, tmp_path, capsys, bad):
    rows = _rows()
    rows[5]["label"] = bad
    assert cli.main(["implicit-prm", "--config", write_config(rows), *PEFT_FLAGS]) == 2
    err = capsys.readouterr().err
    assert f"column 'label', row 5: expected a boolean or 0/1 label, got {bad!r}" in err
    assert "trl-likelihood implicit-prm: error: train_dataset: column" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "README.md")


def test_method_help_has_prm_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["implicit-prm", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--beta", "--loss_type", "--precompute_ref_log_probs", "--use_peft", "--lora_r", "--config"):
        assert flag in out


def test_console_script_help_lists_implicit_prm():
    """The installed entry point, in a fresh interpreter: the method and the TRL command it replaces."""
    assert os.path.exists(BIN), "install the package (pip install -e .) so the console script exists"
    proc = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())  # argparse wraps the help, and puts a long name on a line of its own
    assert "implicit-prm Implicit PRM: outcome reward" in text and "Replaces 'trl kto'" in text
