"""Model cards written by ``save_model()``: Hub metadata right for the artifact, citations, hyperparameters, the last
evaluation, a quick start that loads the folder it describes, and no local path or token anywhere in the text."""

from __future__ import annotations

import os
import re
from pathlib import Path

import datasets
import pytest
import tokenizers
import torch
import transformers
import trl
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import LoraConfig

import trl_likelihood
from tests.conftest import cpu_args
from tests.tiny import CORPUS
from trl_likelihood import MixCEConfig, MixCETrainer
from trl_likelihood.cards import CardInfo, hub_model_id, last_eval_metrics, public_model_name, render_card

FAKE_TOKEN = "hf_FakeCardTokenDoNotUse0123456789"


def _train(tiny_model_dir: str, output_dir: Path, peft: bool) -> MixCETrainer:
    """Two MixCE steps with an evaluation after each, then ``save_model()``: the card under test."""
    args = MixCEConfig(
        str(output_dir),
        eta=0.3,
        **cpu_args(max_steps=2, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4),
        hub_token=FAKE_TOKEN,  # never used without a push; it must not reach the card either way
    )
    trainer = MixCETrainer(
        model=tiny_model_dir,
        args=args,
        train_dataset=Dataset.from_dict({"text": CORPUS[:24]}),
        eval_dataset=Dataset.from_dict({"text": CORPUS[24:32]}),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if peft else None,
    )
    trainer.train()
    trainer.save_model()
    return trainer


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> tuple[MixCETrainer, Path]:
    out = tmp_path_factory.mktemp("cards") / "tiny-mixce-lora"
    return _train(tiny_model_dir, out, peft=True), out


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory) -> tuple[MixCETrainer, Path]:
    out = tmp_path_factory.mktemp("cards") / "tiny-mixce-full"
    return _train(tiny_model_dir, out, peft=False), out


def quick_start(card: ModelCard) -> str:
    """The Python block under '## Quick start'."""
    section = card.text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block in the quick start"
    return match.group(1)


def run_quick_start(card: ModelCard, repo_id: str, folder: Path) -> dict:
    """Execute the snippet against the saved folder instead of the Hub repo it names."""
    code = quick_start(card)
    assert f'"{repo_id}"' in code
    namespace: dict = {}
    exec(compile(code.replace(f'"{repo_id}"', repr(str(folder))), "quick_start", "exec"), namespace)
    return namespace


def assert_nothing_local_or_secret(text: str, *paths: str | Path) -> None:
    for path in (*paths, os.path.expanduser("~"), os.getcwd()):
        assert str(path) not in text, f"local path {path} in the card"
    assert FAKE_TOKEN not in text
    assert not re.search(r"hf_[A-Za-z0-9]{8,}", text), "something shaped like a Hub token in the card"


def test_lora_card_metadata(lora_run, tiny_model_dir):
    trainer, out = lora_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model is None  # a local folder is no Hub id: its name must not pose as one
    assert {"trl", "trl-likelihood", "mixce"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-generation"
    assert not card.data.datasets  # save_model() knows no dataset name
    assert (
        f"A LoRA adapter for `{Path(tiny_model_dir).name}` (a local model, not a Hub id, so the metadata names no "
        "`base_model`)" in card.text
    )  # the folder's name, in the text only
    assert "base_model_name_or_path" in card.text  # says how to point at the base


def test_lora_card_text(lora_run, tiny_model_dir):
    trainer, out = lora_run
    text = ModelCard.load(out / "README.md").text
    assert "arxiv.org/abs/2305.16958" in text and "@inproceedings{zhang2023mixce" in text  # MixCE
    assert "@software{vonwerra2020trl" in text  # TRL
    assert "| `eta` | `0.3` |" in text  # the run's eta, not the default 0.5
    assert "| `max_steps` | `2` |" in text
    assert "`r=4`" in text and "`target_modules=['q_proj', 'v_proj']`" in text
    evals = [h for h in trainer.state.log_history if "eval_mixce/forward_nll" in h]
    assert len(evals) == 2  # the card must show the last of them
    assert f"| `mixce/forward_nll` | {evals[-1]['eval_mixce/forward_nll']:.4g} |" in text
    assert f"| `mixce/perplexity` | {evals[-1]['eval_mixce/perplexity']:.4g} |" in text
    assert_nothing_local_or_secret(text, out, tiny_model_dir, out.parent)


def test_lora_quick_start_loads_the_adapter(lora_run):
    trainer, out = lora_run
    card = ModelCard.load(out / "README.md")
    code = quick_start(card)
    assert "AutoPeftModelForCausalLM.from_pretrained" in code and "AutoModelForCausalLM" not in code
    namespace = run_quick_start(card, repo_id=out.name, folder=out)  # no hub_model_id: the repo is the run's name
    from peft import PeftModel

    model = namespace["model"]
    assert isinstance(model, PeftModel) and model.peft_config["default"].r == 4
    assert namespace["output"].shape[0] == 1  # it generated


def test_lora_card_with_dataset_name(lora_run, tmp_path):
    trainer, _ = lora_run
    trainer.create_model_card(dataset_name="user/tiny-corpus", output_dir=str(tmp_path))
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets == ["user/tiny-corpus"]
    assert "(https://huggingface.co/datasets/user/tiny-corpus)" in card.text

    local = str(tmp_path / "data" / "train.jsonl")  # a local file is no Hub dataset: left out, path never shown
    trainer.create_model_card(dataset_name=local, output_dir=str(tmp_path))
    card = ModelCard.load(tmp_path / "README.md")
    assert not card.data.datasets
    assert_nothing_local_or_secret(card.content, tmp_path)


def test_full_finetune_card(full_run, tiny_model_dir):
    trainer, out = full_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.base_model is None and f"`{Path(tiny_model_dir).name}` (a local model" in card.text
    assert {"trl", "trl-likelihood", "mixce"} <= set(card.data.tags)
    code = quick_start(card)
    assert "AutoModelForCausalLM.from_pretrained" in code and "Peft" not in code
    assert "| `eta` | `0.3` |" in card.text and "mixce/forward_nll" in card.text
    assert_nothing_local_or_secret(card.content, out, tiny_model_dir, out.parent)

    from transformers import Qwen2ForCausalLM

    namespace = run_quick_start(card, repo_id=out.name, folder=out)
    assert isinstance(namespace["model"], Qwen2ForCausalLM)


def test_checkpoint_folders_get_our_card(tiny_model_dir, tmp_path):
    """PEFT writes its own card (with the base's local path) into every checkpoint; ours replaces it."""
    args = MixCEConfig(str(tmp_path / "run"), **cpu_args(max_steps=1, save_strategy="steps", save_steps=1))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    data = Dataset.from_dict({"text": CORPUS[:8]})
    MixCETrainer(model=tiny_model_dir, args=args, train_dataset=data, peft_config=lora).train()
    card = ModelCard.load(tmp_path / "run" / "checkpoint-1" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None
    assert "mixce" in card.data.tags
    assert_nothing_local_or_secret(card.content, tmp_path, tiny_model_dir)


def test_public_model_name():
    assert public_model_name("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert public_model_name("gpt2") == "gpt2"
    assert public_model_name("/home/someone/models/llama-7b/") == "llama-7b"
    assert public_model_name("./models/llama-7b") == "llama-7b"
    assert public_model_name("~/llama-7b") == "llama-7b"
    assert public_model_name(None) is None and public_model_name("") is None


def test_hub_model_id(tmp_path, monkeypatch):
    assert hub_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B" and hub_model_id("gpt2") == "gpt2"
    for local in ("/home/someone/llama-7b", "./llama-7b", "~/llama-7b", "models/meta/llama-7b", "C:\\models\\llama"):
        assert hub_model_id(local) is None, local
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "llama-7b").mkdir(parents=True)
    assert hub_model_id("models/llama-7b") is None  # shaped like a Hub id, but a folder here is what loads
    assert hub_model_id(None) is None and hub_model_id("") is None


def test_hub_base_of_a_trained_model_goes_into_the_metadata(full_run):
    """The config's ``_name_or_path`` is the Hub id when the model came from the Hub (here set by hand)."""
    trainer, _ = full_run
    local, trainer.model.config._name_or_path = trainer.model.config._name_or_path, "Qwen/Qwen2.5-0.5B"
    try:
        info = CardInfo.from_trainer(trainer)
    finally:
        trainer.model.config._name_or_path = local
    assert info.base_model == "Qwen/Qwen2.5-0.5B" and info.base_model_local is None


@pytest.mark.parametrize("run", ["lora_run", "full_run"])
def test_framework_versions_are_those_of_trl_cards_plus_ours(run, request):
    _, out = request.getfixturevalue(run)
    section = ModelCard.load(out / "README.md").text.split("### Framework versions", 1)[1].split("##", 1)[0]
    expected = {
        "trl-likelihood": trl_likelihood.__version__,
        "TRL": trl.__version__,
        "Transformers": transformers.__version__,
        "PyTorch": torch.__version__,
        "Datasets": datasets.__version__,
        "Tokenizers": tokenizers.__version__,
    }
    if run == "lora_run":
        import peft

        expected["PEFT"] = peft.__version__
    assert section.strip().splitlines() == [f"- {name}: {value}" for name, value in expected.items()]


def test_last_eval_metrics_takes_the_last_evaluation():
    history = [
        {"loss": 3.0, "step": 1},
        {"eval_loss": 2.5, "eval_mixce/forward_nll": 2.9, "eval_runtime": 0.1, "step": 1},
        {"loss": 2.0, "step": 2},
        {"eval_loss": 1.5, "eval_mixce/forward_nll": 1.9, "eval_samples_per_second": 80.0, "step": 2},
        {"train_runtime": 3.0, "step": 2},
    ]
    assert last_eval_metrics(history) == {"loss": 1.5, "mixce/forward_nll": 1.9}
    assert last_eval_metrics([{"loss": 3.0}]) == {}


def test_render_card_by_hand_for_a_hub_base():
    info = CardInfo(
        model_name="mixce-qwen",
        method="MixCE",
        base_model="Qwen/Qwen2.5-0.5B",
        is_adapter=True,
        datasets=["user/data"],
        tags=["trl", "trl-likelihood", "mixce"],
        hub_model_id="me/mixce-qwen",
        hyperparameters={"eta": 0.1},
    )
    card = render_card("mixce.md", info)
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and card.data.library_name == "peft"
    assert "[Qwen/Qwen2.5-0.5B](https://huggingface.co/Qwen/Qwen2.5-0.5B)" in card.text
    assert "a local model" not in card.text
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/mixce-qwen")' in quick_start(card)
    assert "### Last evaluation" not in card.text  # no evaluation, no empty table
