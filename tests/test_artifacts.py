"""Safe artifacts, every trainer: after training with checkpoints and a push (to the fake Hub of test_push), the
output folder and every upload hold weights as safetensors only, and no token, environment secret or local path (but
the local folder's ``adapter_config.json`` keeps its base model's path, so that the folder loads as it is).

Allowed non-safetensors files: transformers' resume state in checkpoints (``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth``: optimizer moments and RNG states, not model weights), ``training_args.bin`` (the public copy of
the arguments, checked by test_push) and the method's own resume files (``Case.state_files``). Every file is scanned
byte by byte, binaries included. ``trust_remote_code`` is off unless the user asks for it.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from tests.helpers import LORA
from tests.reliability import CASES, REPO
from tests.test_push import CHECKPOINT_PUSH, FAKE_TOKEN, fake_hub  # noqa: F401  (the fixture)
from trl_likelihood.cli import make_parser, model_init_kwargs
from trl_likelihood.methods import METHODS

ENV_SECRETS = {"HF_TOKEN": "hf_FakeEnvTokenDoNotUse987654321", "MY_SERVICE_API_KEY": "sk-FakeEnvSecretDoNotUse42"}
# A token given the natural way to load a gated model (or a `ref_model` by id): in the model's init keywords.
INIT_TOKEN = "hf_FakeInitKwargsTokenDoNotUse55555"
RESUME_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_clean(files: dict[str, bytes], *paths: str) -> None:
    forbidden = [FAKE_TOKEN, INIT_TOKEN, *ENV_SECRETS.values(), *paths, os.path.expanduser("~") + "/"]
    for name, data in files.items():
        for needle in forbidden:
            assert needle.encode() not in data, f"{needle!r} in {name}"


def _assert_weights_are_safetensors(files: dict[str, bytes], allowed: set[str], peft: bool) -> None:
    folders = {os.path.dirname(n) for n in files if n.endswith(".safetensors")}
    weights = "adapter_model.safetensors" if peft else "model.safetensors"
    assert {os.path.dirname(n) for n in files if os.path.basename(n) == weights} == folders and "" in folders
    for name in files:
        if name.endswith(PICKLE_SUFFIXES):
            assert os.path.basename(name) in allowed, f"{name}: weights or state outside safetensors"
            assert os.path.dirname(name) or name.endswith("training_args.bin"), f"{name}: resume state in the model"


def _without_local_base(data: bytes, base: str) -> bytes:
    config = json.loads(data)
    assert config.pop("base_model_name_or_path") == base
    return json.dumps(config).encode()


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("name", list(CASES))
def test_saved_and_pushed_files_are_safe(name, peft, fake_hub, tiny_model_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    for key, value in ENV_SECRETS.items():
        monkeypatch.setenv(key, value)
    case = CASES[name]
    out = tmp_path / "run"
    args = case.args(
        out,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        model_init_kwargs={"token": INIT_TOKEN},
        **CHECKPOINT_PUSH,
    )
    trainer = case.trainer(tiny_model_dir, args, peft_config=LoraConfig(**LORA) if peft else None)
    trainer.train()
    trainer.push_to_hub()
    captured = capsys.readouterr()

    files = _files(out)
    assert {"checkpoint-1/trainer_state.json", "checkpoint-2/optimizer.pt", "README.md"} <= files.keys()
    _assert_weights_are_safetensors(files, RESUME_STATE | set(case.state_files), peft)
    # Locally, PEFT's adapter config keeps the base's path, so that the folder loads as it is (a push never
    # rewrites it); that one field is the only local path allowed, and only in the local folder.
    local = {
        n: _without_local_base(d, tiny_model_dir) if n.endswith("adapter_config.json") else d for n, d in files.items()
    }
    assert any(n.endswith("adapter_config.json") for n in local) == peft
    _assert_clean(local, str(tmp_path), tiny_model_dir)
    assert len(fake_hub.uploads) >= 3  # both checkpoints and the final push
    for upload in fake_hub.uploads:
        _assert_clean(upload["files"], str(tmp_path), tiny_model_dir)
    for needle in (FAKE_TOKEN, INIT_TOKEN, *ENV_SECRETS.values()):
        assert needle not in captured.out + captured.err  # nor in the printed logs
    published = torch.load(out / "training_args.bin", weights_only=False)
    assert published.trust_remote_code is False and published.hub_token is None
    assert args.model_init_kwargs in (None, {"token": INIT_TOKEN})  # the live arguments keep it (SequenceMatch
    # loads the model itself and clears them)
    assert (published.model_init_kwargs or {}).get("token") is None
    if not peft:
        assert "auto_map" not in json.loads(files["config.json"])  # no remote code is referenced by the model


def test_package_never_turns_on_remote_code():
    """No ``trust_remote_code=True`` anywhere in the package: only a user's flag can turn it on."""
    for path in sorted(Path(REPO, "trl_likelihood").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), f"{path}:{node.lineno}"
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                        assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cli_loads_models_without_remote_code_unless_asked(method, tiny_model_dir):
    base = ["--model_name_or_path", tiny_model_dir, "--dataset_name", "x.jsonl", "--output_dir", "o", "--use_cpu"]
    for extra, expected in (([], False), (["--trust_remote_code"], True)):
        _, training_args, model_args, _ = make_parser(method).parse_args_and_config(base + extra)
        assert model_init_kwargs(training_args, model_args)["trust_remote_code"] is expected


def test_public_training_args_scrub_credentials_at_any_depth():
    """Credentials by name in nested dicts and lists, and token-shaped strings under any name, are blanked; token
    settings that are not credentials (SFT's ``eos_token``) and everything else stay."""
    from trl_likelihood import MixCEConfig
    from trl_likelihood.trainers.publishing import public_training_args

    args = MixCEConfig(
        "/home/someone/run",
        hub_token=FAKE_TOKEN,
        eos_token="<|im_end|>",
        model_init_kwargs={
            "token": INIT_TOKEN,
            "dtype": "bfloat16",
            "quantization": {"api_key": "sk-nested", "servers": [{"password": "p4ss"}, "hf_" + "A" * 30]},
        },
        report_to="none",
        use_cpu=True,
    )
    public = public_training_args(args)
    kwargs = public.model_init_kwargs
    assert public.hub_token is None and kwargs["token"] is None and kwargs["dtype"] == "bfloat16"
    assert kwargs["quantization"] == {"api_key": None, "servers": [{"password": None}, None]}
    assert public.eos_token == "<|im_end|>" and public.output_dir == "run"
    assert args.model_init_kwargs["token"] == INIT_TOKEN and args.hub_token == FAKE_TOKEN  # the live object unchanged
