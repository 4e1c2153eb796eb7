"""``push_to_hub`` offline: a fake Hub client records what transformers would create and upload, file by file.

transformers routes every Hub call of the Trainer through ``transformers.trainer.hf_api()``: ``create_repo`` in
``init_hf_repo``, ``upload_folder`` in ``push_to_hub`` and ``_push_from_checkpoint``. The fake checks each call
against ``HfApi``'s real signature, applies huggingface_hub's own ignore-pattern filter, and keeps the bytes of every
file that would be uploaded, read at call time.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from peft import AutoPeftModelForCausalLM, LoraConfig
from transformers import AutoModelForCausalLM

from tests.conftest import cpu_args
from tests.tiny import CORPUS
from trl_likelihood import ImplicitPRM, ImplicitPRMConfig, ImplicitPRMTrainer, MixCEConfig, MixCETrainer

REPO_ID = "user/tiny-mixce"
FAKE_TOKEN = "hf_FakePushTokenDoNotUse0123456789"
# Training arguments that push every checkpoint (as ``last-checkpoint``) to the fake Hub with the fake token.
CHECKPOINT_PUSH = dict(push_to_hub=True, hub_model_id=REPO_ID, hub_token=FAKE_TOKEN, hub_strategy="checkpoint")
TEXT_SUFFIXES = (".md", ".json", ".jinja", ".txt", ".yaml")


class FakeHub:
    """Stands in for ``HfApi``: records ``create_repo`` and ``upload_folder`` and what each upload would send."""

    def __init__(self) -> None:
        self.repos: list[dict] = []
        self.uploads: list[dict] = []

    def create_repo(self, *args, **kwargs) -> SimpleNamespace:
        call = inspect.signature(HfApi.create_repo).bind(None, *args, **kwargs).arguments
        self.repos.append(call)
        return SimpleNamespace(repo_id=call["repo_id"])  # the part of RepoUrl that transformers reads

    def upload_folder(self, **kwargs) -> SimpleNamespace | Future:
        call = inspect.signature(HfApi.upload_folder).bind(None, **kwargs).arguments
        folder = Path(call["folder_path"])
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        kept = filter_repo_objects(
            names, allow_patterns=call.get("allow_patterns"), ignore_patterns=call.get("ignore_patterns")
        )
        call["files"] = {name: (folder / name).read_bytes() for name in kept}
        self.uploads.append(call)
        commit = SimpleNamespace(commit_url=f"https://huggingface.co/{call['repo_id']}/commit/0", oid="0")
        if call.get("run_as_future"):  # checkpoint pushes: transformers waits on these futures later
            future: Future = Future()
            future.set_result(commit)
            return future
        return commit


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    import transformers.trainer

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    return hub


def make_trainer(tiny_model_dir: str, output_dir: Path, peft: bool, **overrides) -> MixCETrainer:
    settings = dict(max_steps=2, push_to_hub=True, hub_model_id=REPO_ID, hub_token=FAKE_TOKEN)
    args = MixCEConfig(str(output_dir), **cpu_args(**{**settings, **overrides}))
    return MixCETrainer(
        model=tiny_model_dir,
        args=args,
        train_dataset=Dataset.from_dict({"text": CORPUS[:24]}),
        eval_dataset=Dataset.from_dict({"text": CORPUS[24:32]}),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if peft else None,
    )


def assert_no_secret_or_local_path(files: dict[str, bytes], *paths: str | Path) -> None:
    """Every uploaded file, text or binary (``training_args.bin`` is a pickle), byte by byte."""
    forbidden = [FAKE_TOKEN, os.path.expanduser("~"), os.getcwd(), *map(str, paths)]
    for name, data in files.items():
        for needle in forbidden:
            assert needle.encode() not in data, f"{needle!r} would be uploaded in {name}"


def load_training_args(data: bytes, tmp_path: Path) -> MixCEConfig:
    path = tmp_path / "uploaded_training_args.bin"
    path.write_bytes(data)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_push_to_hub_uploads_model_tokenizer_and_card(fake_hub, tiny_model_dir, tmp_path, peft):
    out = tmp_path / "run"
    # Both ways to push: `push_to_hub=True` (repo created with the trainer) and an explicit call on a trainer without.
    push_during_training = not peft
    trainer = make_trainer(tiny_model_dir, out, peft, push_to_hub=push_during_training)
    assert len(fake_hub.repos) == push_during_training
    trainer.train()
    trainer.push_to_hub(dataset_name="user/tiny-corpus")
    assert [(r["repo_id"], r["token"]) for r in fake_hub.repos] == [(REPO_ID, FAKE_TOKEN)]  # init_hf_repo

    assert len(fake_hub.uploads) == 1
    upload = fake_hub.uploads[0]
    assert upload["repo_id"] == REPO_ID and upload["token"] == FAKE_TOKEN  # the token goes to the API, only there
    assert upload.get("path_in_repo") is None
    files = upload["files"]
    assert {"README.md", "tokenizer.json", "tokenizer_config.json"} <= files.keys()
    assert not any(name.startswith("checkpoint-") or "/" in name for name in files)
    if peft:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= files.keys()
        assert not {"model.safetensors", "pytorch_model.bin", "config.json"} & files.keys()  # no full weights
        adapter_config = json.loads(files["adapter_config.json"])
        assert adapter_config["base_model_name_or_path"] == Path(tiny_model_dir).name
    else:
        assert {"model.safetensors", "config.json", "generation_config.json"} <= files.keys()
        assert not any(name.startswith("adapter_") for name in files)

    readme = tmp_path / "uploaded_README.md"
    readme.write_bytes(files["README.md"])
    card = ModelCard.load(readme)
    assert card.data.library_name == ("peft" if peft else "transformers")
    assert card.data.base_model is None  # a local folder is no Hub id; the text names it
    assert card.data.datasets == ["user/tiny-corpus"]
    assert card.data.model_name == "tiny-mixce"
    loader = "AutoPeftModelForCausalLM" if peft else "AutoModelForCausalLM"
    assert f'model = {loader}.from_pretrained("{REPO_ID}")' in card.text
    assert f'AutoTokenizer.from_pretrained("{REPO_ID}")' in card.text

    assert_no_secret_or_local_path(files, tmp_path, tiny_model_dir)
    assert all(not name.endswith(TEXT_SUFFIXES) or files[name].decode() for name in files)  # text files are text

    # training_args.bin is still there for reproducibility, without the token and with no absolute path.
    uploaded_args = load_training_args(files["training_args.bin"], tmp_path)
    assert type(uploaded_args) is MixCEConfig
    assert uploaded_args.hub_token is None and uploaded_args.output_dir == "run"
    assert uploaded_args.eta == trainer.args.eta and uploaded_args.hub_model_id == REPO_ID
    # ...while the live arguments are untouched: same class, same token.
    assert type(trainer.args) is MixCEConfig and trainer.args.hub_token == FAKE_TOKEN
    assert trainer.args.output_dir == str(out)
    # The local folder still loads on its own: pushing changed only what was uploaded.
    assert_local_folder_loads(out, tiny_model_dir, peft)


def assert_local_folder_loads(out: Path, tiny_model_dir: str, peft: bool) -> None:
    if peft:
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir
        model = AutoPeftModelForCausalLM.from_pretrained(out)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_checkpoint_pushes_leak_nothing(fake_hub, tiny_model_dir, tmp_path):
    """``hub_strategy='checkpoint'`` pushes on every save: the run folder and the checkpoint as ``last-checkpoint``."""
    out = tmp_path / "run"
    trainer = make_trainer(
        tiny_model_dir, out, peft=True, save_strategy="steps", save_steps=1, hub_strategy="checkpoint"
    )
    trainer.train()

    assert [u.get("path_in_repo") for u in fake_hub.uploads] == [None, "last-checkpoint"] * 2  # two saves
    assert all(u["repo_id"] == REPO_ID and u["token"] == FAKE_TOKEN for u in fake_hub.uploads)
    for upload in fake_hub.uploads:
        files = upload["files"]
        assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "training_args.bin"} <= files.keys()
        assert_no_secret_or_local_path(files, tmp_path, tiny_model_dir)
        assert load_training_args(files["training_args.bin"], tmp_path).hub_token is None
        readme = tmp_path / "uploaded_README.md"
        readme.write_bytes(files["README.md"])
        assert "mixce" in ModelCard.load(readme).data.tags  # ours, not PEFT's generic card
    assert trainer.args.hub_token == FAKE_TOKEN
    assert_local_folder_loads(out, tiny_model_dir, peft=True)
    assert_local_folder_loads(out / "checkpoint-2", tiny_model_dir, peft=True)


def test_pushed_prm_loads_locally_with_its_trained_beta(fake_hub, tiny_model_dir, tmp_path):
    """Item 7/8 of the friction issue: after a push the local adapter still loads as an ``ImplicitPRM``, which scores
    with the ``beta`` it was trained with (saved in ``method_settings.json``, uploaded too); another one warns."""
    rows = [{"prompt": t[:12], "completion": t[12:], "label": i % 2 == 0} for i, t in enumerate(CORPUS[:8])]
    out = tmp_path / "prm"
    trainer = ImplicitPRMTrainer(
        model=tiny_model_dir,
        args=ImplicitPRMConfig(str(out), beta=0.5, **cpu_args(max_steps=1, push_to_hub=True, hub_model_id=REPO_ID)),
        train_dataset=Dataset.from_list(rows),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.push_to_hub()
    uploaded = json.loads(fake_hub.uploads[-1]["files"]["method_settings.json"])
    assert uploaded["beta"] == 0.5 and uploaded["loss_type"] == "ce"

    prm = ImplicitPRM.from_pretrained(out)
    assert prm.beta == 0.5 and prm.reference_is_base
    assert math.isfinite(prm.score("2+2=", ["4"]).score)
    with pytest.warns(UserWarning, match=r"trained with beta=0.5; scoring with beta=0.05"):
        assert ImplicitPRM.from_pretrained(out, beta=0.05).beta == 0.05
    assert ImplicitPRM(tiny_model_dir, reference=tiny_model_dir).beta == 0.05  # not trained here: the default
