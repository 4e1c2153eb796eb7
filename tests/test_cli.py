"""The ``trl-likelihood`` console script: methods, YAML configs, PEFT, and the errors a user sees before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import transformers
import yaml
from datasets import Dataset

from tests.conftest import cpu_args
from tests.helpers import read_card
from tests.tiny import CORPUS
from trl_likelihood import MixCETrainer, cli
from trl_likelihood.methods import METHODS

BIN = os.path.join(os.path.dirname(sys.executable), "trl-likelihood")


@pytest.fixture
def data_file(tmp_path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in CORPUS[:16]))
    return str(path)


@pytest.fixture
def write_config(tmp_path, tiny_model_dir, data_file):
    """Write a YAML config like a user's (model, data, fast CPU training) with ``overrides``; return its path."""

    def write(name: str = "cfg.yaml", **overrides) -> str:
        config = {
            "model_name_or_path": tiny_model_dir,
            "dataset_name": data_file,
            "output_dir": str(tmp_path / "out"),
            **cpu_args(max_steps=2),
            "eta": 0.3,
            **overrides,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
        return str(path)

    return write


def test_help_lists_methods(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "mixce" in out and "MixCE" in out and "trl sft" in out
    assert cli.main([]) == 0 and "mixce" in capsys.readouterr().out


def test_method_help_has_trl_and_method_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["mixce", "--help"])
    out = capsys.readouterr().out
    flags = ("--eta", "--model_name_or_path", "--dataset_name", "--use_peft", "--lora_r", "--load_in_4bit")
    for flag in (*flags, "--push_to_hub", "--hub_model_id", "--config CFG.yaml"):
        assert flag in out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_help_lists_the_method_flags_first(method, capsys):
    """Before any of TRL's ~200 flags, so ``METHOD --help | head`` shows them (they came after ~700 lines)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([method, "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    own = cli.method_fields(METHODS[method].config_class)
    assert (
        own and "eta" in cli.method_fields(METHODS["mixce"].config_class) and "learning_rate" not in own
    )  # re-defaulted: TRL's
    assert lines[2] == f"{method} options:"
    trl_start = lines.index("options:")  # -h, then TRL's flags from the dataclasses, in their order
    assert any(line.startswith("  --output_dir") for line in lines[trl_start:])
    for name in own:
        assert any(line.startswith(f"  --{name} ") for line in lines[3:trl_start]), f"--{name} not first"
        assert not any(line.startswith(f"  --{name} ") for line in lines[trl_start:]), f"--{name} listed twice"


def test_unknown_method(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sequencematcher"])
    assert exit_.value.code == 2 and "invalid choice: 'sequencematcher'" in capsys.readouterr().err


def test_every_method_parses():
    """The registry contract: each entry's parser yields its own config class and TRL's dataclasses."""
    for name, spec in METHODS.items():
        args = cli.make_parser(name).parse_args_and_config(
            ["--output_dir", "x", "--use_cpu", "--model_name_or_path", "m"]
        )
        assert [type(a).__name__ for a in args] == [
            "ScriptArguments",
            spec.config_class.__name__,
            "ModelConfig",
            "DatasetMixtureConfig",
        ]


def test_config_file_trains_and_saves_model_and_card(write_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["mixce", "--config", write_config(), "--learning_rate", "0.02"]) == 0
    assert f"Model saved to {out}" in capsys.readouterr().out
    files = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "trainer_state.json"} <= files
    assert "adapter_config.json" not in files
    state = json.load(open(out / "trainer_state.json"))
    assert state["global_step"] == 2
    steps = [h for h in state["log_history"] if "loss" in h]
    assert [h["learning_rate"] for h in steps][0] == pytest.approx(0.02)  # the flag beat the YAML's 1e-2
    meta, body = read_card(out)
    assert meta["library_name"] == "transformers" and "mixce" in meta["tags"]
    assert "datasets" not in meta  # a local file is not a Hub dataset: no broken link in the card
    assert "0.3" in body and "eta" in body  # the YAML's eta reached the trainer and its card
    assert str(tmp_path) not in open(out / "README.md").read()  # no local path leaks into the card


def test_run_mixce_is_the_importable_main(write_config, tmp_path):
    """What the launch scripts and other tools call: parsed dataclasses in, a trained trainer out."""
    parsed = cli.make_parser().parse_args_and_config(["--config", write_config(), "--eta", "0.8"])
    trainer = cli.run_mixce(*parsed)
    assert isinstance(trainer, MixCETrainer) and trainer.args.eta == 0.8 and trainer.state.global_step == 2
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_peft_flags_save_an_adapter(write_config, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["mixce", "--config", write_config(), "--use_peft", "--lora_r", "4"]) == 0
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert "model.safetensors" not in files
    assert json.load(open(out / "adapter_config.json"))["r"] == 4
    assert read_card(out)[0]["library_name"] == "peft"


@pytest.mark.slow
def test_load_in_4bit_trains_a_qlora_adapter(write_config, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["mixce", "--config", write_config(), "--use_peft", "--lora_r", "4", "--load_in_4bit"]) == 0
    adapter = json.load(open(out / "adapter_config.json"))
    assert adapter["r"] == 4 and "model.safetensors" not in os.listdir(out)


def test_model_init_kwargs_carry_quantization():
    parser = cli.make_parser("mixce")
    _, training_args, model_args, _ = parser.parse_args_and_config(
        ["--output_dir", "x", "--load_in_4bit", "--use_peft", "--dtype", "bfloat16", "--use_cpu"]
    )
    kwargs = cli.model_init_kwargs(training_args, model_args)
    assert isinstance(kwargs["quantization_config"], transformers.BitsAndBytesConfig)
    assert kwargs["quantization_config"].load_in_4bit and kwargs["dtype"] == "bfloat16"
    assert "device_map" in kwargs  # None on CPU: accelerate places it
    training_args.model_init_kwargs = {"dtype": "float32"}  # the user's explicit choice wins, as in trl's scripts
    assert cli.model_init_kwargs(training_args, model_args)["dtype"] == "float32"
    _, training_args, model_args, _ = parser.parse_args_and_config(["--output_dir", "x", "--use_cpu"])
    assert "quantization_config" not in cli.model_init_kwargs(training_args, model_args)


def test_push_to_hub(write_config, tmp_path, monkeypatch, capsys):
    """Offline: the Hub calls are recorded; the flow (repo init, save, push with the card) is the real one."""
    pushes = []
    monkeypatch.setattr(transformers.Trainer, "init_hf_repo", _fake_init_repo)
    monkeypatch.setattr(transformers.Trainer, "push_to_hub", lambda self, *a, **k: pushes.append(k))
    argv = ["mixce", "--config", write_config(), "--push_to_hub", "--hub_model_id", "someone/tiny-mixce"]
    assert cli.main(argv) == 0
    assert pushes and pushes[-1].get("dataset_name") is None  # a local file is not named as a Hub dataset
    assert "https://huggingface.co/someone/tiny-mixce" in capsys.readouterr().out
    assert read_card(tmp_path / "out")[0]["model_name"] == "tiny-mixce"


def _fake_init_repo(self, *args, **kwargs) -> None:
    self.hub_model_id = self.args.hub_model_id


def test_hub_datasets_go_on_the_card(write_config, monkeypatch, tmp_path):
    """A Hub id is loaded through datasets.load_dataset (patched: offline) and named in the card's metadata."""
    from datasets import Dataset, DatasetDict

    from trl_likelihood import data

    asked = []

    def fake_load_dataset(path, **kwargs):
        asked.append(path)
        return DatasetDict({"train": Dataset.from_dict({"text": CORPUS[:16]})})

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    assert cli.main(["mixce", "--config", write_config(dataset_name="someone/corpus")]) == 0
    assert asked == ["someone/corpus"]
    assert read_card(tmp_path / "out")[0]["datasets"] == ["someone/corpus"]


def test_eval_split_is_used_when_evaluating(write_config, tmp_path, data_file):
    folder = tmp_path / "splits"
    folder.mkdir()
    os.link(data_file, folder / "train.jsonl")
    os.link(data_file, folder / "test.jsonl")
    config = write_config(dataset_name=str(folder), eval_strategy="steps", eval_steps=2)
    assert cli.main(["mixce", "--config", config]) == 0
    state = json.load(open(tmp_path / "out" / "trainer_state.json"))
    assert any("eval_mixce/perplexity" in h for h in state["log_history"])


@pytest.mark.parametrize(
    "overrides, argv, message",
    [
        ({"eta": 1.5}, [], "`eta` must be a number in [0, 1] (weight of the forward CE), got 1.5"),
        ({"eta": "lots"}, [], "argument --eta: invalid float value: 'lots'"),
        ({"etaa": 0.5}, [], "Unknown arguments from config file: ['--etaa', '0.5']"),
        ({"dataset_name": None}, [], "No training data: pass --dataset_name"),
        ({"dataset_name": "data/nowhere.jsonl"}, [], "'data/nowhere.jsonl' does not exist"),
        ({}, ["--dataset_train_split", "training"], "has no split 'training' (--dataset_train_split); its splits"),
        ({"eval_strategy": "steps"}, [], "--eval_strategy steps needs an evaluation split, but --dataset_name"),
        ({"model_name_or_path": None}, [], "No model: pass --model_name_or_path"),
        ({"model_name_or_path": "./no/tiny-model"}, [], "Model './no/tiny-model' does not exist (resolved to '/"),
        ({"model_name_or_path": "models/no/tiny"}, [], "Model 'models/no/tiny' does not exist"),  # not owner/name
        ({"model_name_or_path": "tiny-modl"}, [], "--model_name_or_path 'tiny-modl' is no local folder (resolved to"),
        ({}, ["--load_in_4bit"], "--load_in_4bit / --load_in_8bit train only an adapter: add --use_peft"),
        ({"dataset_text_field": "body"}, [], "train_dataset has columns ['text']; expected a 'body' column"),
    ],
    ids=lambda x: None,
)
def test_bad_input_is_a_clear_error_before_training(write_config, tmp_path, capsys, overrides, argv, message):
    argv = ["mixce", "--config", write_config(**overrides), *argv]
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse's own type errors exit from inside the parser
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("\n") <= 3  # the message, not a screen of usage
    assert not os.path.exists(tmp_path / "out" / "README.md")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("data.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c\n', "line 3, column 10: Unterminated string."),
        ("data.jsonl", '{"text": "a"}\n\n[1, 2]\n', "line 3: expected one JSON object per line, got list [1, 2]."),
        ("data.json", '[{"text": "a"},\n {"text": "b"}\n {"text": "c"}]\n', "line 3, column 2: Expecting ','"),
        ("empty.jsonl", "", "is empty: it has no rows to train on."),
        ("blank.jsonl", "\n\n", "is empty: it has no rows to train on."),
    ],
    ids=["bad-line", "not-an-object", "bad-json", "empty", "blank-lines"],
)
def test_unreadable_data_file_is_one_line_naming_file_and_line(write_config, tmp_path, capsys, name, content, message):
    """``datasets`` raises a ``DatasetGenerationError`` (or a bare ``StopIteration`` on an empty file): one line, 2."""
    (tmp_path / name).write_text(content)
    assert cli.main(["mixce", "--config", write_config(dataset_name=str(tmp_path / name))]) == 2
    err = capsys.readouterr().err
    assert f"trl-likelihood mixce: error: {tmp_path / name} {message}" in err.splitlines()[-1]
    assert "Traceback" not in err


def test_trainer_names_a_missing_local_model(tmp_path):
    """Not only the CLI: every trainer checks a local-looking path before transformers takes it for a Hub id."""
    missing = str(tmp_path / "tiny-modl")
    with pytest.raises(FileNotFoundError, match=f"Model '{missing}' does not exist"):
        MixCETrainer(model=missing, train_dataset=Dataset.from_dict({"text": CORPUS[:4]}))


def test_missing_config_file(capsys, tmp_path):
    assert cli.main(["mixce", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_console_script_in_a_subprocess(write_config, tmp_path):
    """The installed entry point end to end, with a fresh interpreter reading only the YAML file."""
    assert os.path.exists(BIN), "install the package (pip install -e .) so the console script exists"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [BIN, "mixce", "--config", write_config(), "--output_dir", str(tmp_path / "sub")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Model saved to {tmp_path / 'sub'}" in proc.stdout
    assert {"model.safetensors", "README.md"} <= set(os.listdir(tmp_path / "sub"))
