"""Every private-TRL shim in trl_likelihood/_compat.py, exercised against the installed TRL."""

from __future__ import annotations

import importlib
import inspect
import os
import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import cpu_args
from trl_likelihood import MixCEConfig, MixCETrainer, _compat


def test_installed_trl_is_in_the_tested_range():
    assert _compat.trl_version_is_tested()


def test_fused_lm_head_matches_full_logits(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    _compat.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    labels = ids.clone()
    labels[0, :2] = -100
    fused = model(input_ids=ids, labels=labels, fused_lm_head=True)
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    expected = logp.masked_fill(labels[0, 1:] == -100, 0.0)
    torch.testing.assert_close(fused.log_probs[0], expected, rtol=1e-5, atol=1e-6)
    assert fused.label_mask[0].tolist() == [False, True, True, True]


def test_metrics_store_and_sft_metrics(tiny_model_dir, lm_dataset, tmp_path):
    trainer = MixCETrainer(
        model=tiny_model_dir, args=MixCEConfig(str(tmp_path), **cpu_args()), train_dataset=lm_dataset
    )
    store = _compat.metrics_store(trainer, "train")
    store["probe"].append(1.0)
    assert trainer._metrics["train"]["probe"] == [1.0]
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    outputs = trainer.model(**batch, fused_lm_head=True)
    _compat.record_sft_metrics(trainer, batch, outputs, "train")
    assert store["num_tokens"] == [batch["attention_mask"].sum().item()]
    assert 0.0 <= store["mean_token_accuracy"][-1] <= 1.0 and store["entropy"][-1] > 0


def test_calling_callback_handler_finds_the_handler_of_an_event():
    from transformers import TrainerCallback, TrainingArguments
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, TrainerControl, TrainerState

    seen = []

    class Probe(TrainerCallback):
        def on_init_end(self, args, state, control, **kwargs):
            seen.append(_compat.calling_callback_handler())

    handler = CallbackHandler([DefaultFlowCallback(), Probe()], None, None, None, None)
    handler.on_init_end(TrainingArguments("unused", report_to="none"), TrainerState(), TrainerControl())
    assert seen == [handler] and _compat.calling_callback_handler() is None


def test_uploads_staged_uploads_a_prepared_copy_and_leaves_the_folder(tmp_path, monkeypatch):
    import transformers.trainer

    sent = {}

    class Api:
        def upload_folder(self, **kwargs):
            folder = kwargs["folder_path"]
            sent.update({n: open(os.path.join(folder, n)).read() for n in sorted(os.listdir(folder))})
            return "done"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: Api())
    (tmp_path / "config.json").write_text("local")
    (tmp_path / "_ignored").write_text("x")

    def prepare(folder: str) -> None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("public")

    with _compat.uploads_staged(prepare):
        result = transformers.trainer.hf_api().upload_folder(folder_path=str(tmp_path), ignore_patterns=["_*"])
    assert result == "done" and sent == {"config.json": "public"}
    assert (tmp_path / "config.json").read_text() == "local"


@pytest.mark.parametrize("path", sorted(_compat.PRIVATE_METHODS))
def test_private_methods_have_the_pinned_signatures(path):
    """Every private transformers/TRL method the trainers override or call still exists with the parameters the
    overrides were written against."""
    module_name, _, attribute_path = path.partition(".")
    obj = importlib.import_module(module_name)
    for part in attribute_path.split("."):
        if not hasattr(obj, part) and isinstance(obj, types.ModuleType):
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        else:
            obj = getattr(obj, part)
    assert callable(obj)
    if _compat.PRIVATE_METHODS[path]:
        assert tuple(inspect.signature(obj).parameters) == _compat.PRIVATE_METHODS[path]


def test_every_private_override_is_listed():
    """A trainer method named like a private parent method is an override of private API: it must be listed.
    (Class attributes such as TRL's ``_name``/``_tag_names`` for the card are data, set the TRL way.)"""
    import transformers
    import trl

    from trl_likelihood import trainers

    listed = {path.rsplit(".", 1)[-1] for path in _compat.PRIVATE_METHODS}
    parents = (transformers.Trainer, trl.SFTTrainer)
    for name in dir(trainers):
        cls = getattr(trainers, name)
        if not isinstance(cls, type):
            continue
        ours = [base for base in cls.__mro__ if base.__module__.startswith("trl_likelihood")]
        for attr in {a for base in ours for a in vars(base) if callable(vars(base)[a])}:
            if attr.startswith("_") and not attr.startswith("__") and any(hasattr(p, attr) for p in parents):
                assert attr in listed, f"{cls.__name__}.{attr} overrides private API without a _compat entry"
