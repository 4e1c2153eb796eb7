"""LikelihoodDiagnosticsCallback: values against a naive forward and TRL's own DPO log-probs, logging, warnings.

The naive check runs the model's ordinary forward in float64 and shares no code with ``probe_statistics``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from tests.conftest import cpu_args
from tests.tiny import CORPUS
from trl_likelihood import MixCEConfig, MixCETrainer
from trl_likelihood.diagnostics import LikelihoodDiagnosticsCallback, encode_probe, probe_statistics

KEYS = ("probe_logp", "topk_entropy", "topk_mass", "probe_logp_change")
# Completions made of characters the tiny corpus never uses: training on the corpus must take mass away from them.
UNSEEN_PROBE = [{"prompt": "the cat", "completion": " zq xj vk"}, {"prompt": "a dog", "completion": " qq zz"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def preference_dataset() -> Dataset:
    rows = [s.split(" ", 3) for s in CORPUS[:24]]
    return Dataset.from_dict(
        {
            "prompt": [" ".join(r[:3]) for r in rows],
            "chosen": [" " + r[3] for r in rows],
            "rejected": [" " + " ".join(reversed(r[3].split())) for r in rows],
        }
    )


def _naive(model, ids: list[int], start: int, k: int) -> tuple[float, float, float]:
    """Completion log-likelihood, mean top-k entropy and mass, from full float64 logits."""
    logq = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)[:-1]
    logp = sum(logq[t - 1, ids[t]].item() for t in range(start, len(ids)))
    probs = logq[start - 1 :].exp().sort(-1, descending=True).values[:, :k]  # positions predicting the completion
    mass = probs.sum(-1)
    renorm = probs / mass[:, None]
    entropy = -(renorm * renorm.log()).sum(-1)
    return logp, entropy.mean().item(), mass.mean().item()


def test_encode_probe_formats(tokenizer):
    row = encode_probe({"prompt": "the cat", "completion": " runs fast."}, tokenizer)
    prompt_ids = tokenizer("the cat")["input_ids"]
    assert row.input_ids == tokenizer("the cat runs fast.")["input_ids"] + [tokenizer.eos_token_id]
    assert row.completion_start == len(prompt_ids) and row.input_ids[: len(prompt_ids)] == prompt_ids
    assert encode_probe({"prompt": "the cat", "chosen": " runs fast."}, tokenizer) == row
    assert (
        encode_probe({"prompt": "the cat", "completion": " runs fast."}, tokenizer, add_eos=False).input_ids
        == (row.input_ids[:-1])
    )
    given = encode_probe({"prompt_ids": [5, 6], "completion_ids": [7, 8, 9]}, None)
    assert (given.input_ids, given.completion_start) == ([5, 6, 7, 8, 9], 2)
    chat = encode_probe(
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "red dog"}]},
        tokenizer,
    )
    rendered = tokenizer.decode(chat.input_ids[chat.completion_start :])
    assert rendered == "red dog<|im_end|>"  # the template's closing tokens are part of the completion
    with pytest.raises(ValueError, match="`prompt` and `completion`"):
        encode_probe({"text": "the cat"}, tokenizer)


def test_probe_statistics_match_a_naive_forward(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [encode_probe(p, tokenizer) for p in [*UNSEEN_PROBE, {"prompt": "a model", "completion": " learns."}]]
    stats = probe_statistics(model, rows, top_k=5, batch_size=2)  # two batches, one of them padded
    naive = [_naive(model, r.input_ids, r.completion_start, 5) for r in rows]
    n_tokens = [len(r.input_ids) - r.completion_start for r in rows]
    assert stats["probe_logp"] == pytest.approx(sum(n[0] for n in naive) / 3, rel=1e-5)
    # top-k statistics are means over completion tokens, so each probe weighs by its length
    assert stats["topk_entropy"] == pytest.approx(sum(n[1] * t for n, t in zip(naive, n_tokens)) / sum(n_tokens))
    assert stats["topk_mass"] == pytest.approx(sum(n[2] * t for n, t in zip(naive, n_tokens)) / sum(n_tokens))
    full = probe_statistics(model, rows, top_k=10_000)  # k beyond the vocabulary: all of it
    assert full["topk_mass"] == pytest.approx(1.0, abs=1e-6)
    assert full["topk_entropy"] > stats["topk_entropy"] and stats["topk_entropy"] <= math.log(5) + 1e-6


def test_compute_keeps_train_mode_and_gradients_under_peft(tiny_model_dir, tokenizer):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, lora_alpha=8))
    model.train()
    callback = LikelihoodDiagnosticsCallback(UNSEEN_PROBE, tokenizer)
    values = callback.compute(model)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert set(values) == set(KEYS) and all(math.isfinite(v) for v in values.values())
    assert values["probe_logp_change"] == 0.0  # the first call is the baseline


class _Recorder(TrainerCallback):
    """A stand-in reporter: remembers the keys of every ``logs`` it receives."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.keys |= set(logs or {})


@pytest.mark.parametrize("register", ["callbacks", "add_callback", "attach"])
def test_callback_with_trl_dpo_trainer(tiny_model_dir, preference_dataset, tmp_path, caplog, register):
    """Every way to register it (the README's ``callbacks=[diag]`` first) lets a reporter registered before it (as
    transformers registers W&B and TensorBoard) see the values."""
    probe = preference_dataset.select(range(4))
    callback = LikelihoodDiagnosticsCallback(probe, topk_mass_threshold=0.0)  # any mass crosses it: warns at once
    reporter = _Recorder()
    trainer = DPOTrainer(
        model=tiny_model_dir,
        args=DPOConfig(str(tmp_path), **cpu_args()),
        train_dataset=preference_dataset,
        eval_dataset=probe,
        callbacks=[reporter, callback] if register == "callbacks" else [reporter],
    )
    if register == "add_callback":
        trainer.add_callback(callback)
    elif register == "attach":
        callback.attach(trainer)
    assert trainer.callback_handler.callbacks.count(callback) == 1
    assert register == "add_callback" or trainer.callback_handler.callbacks[0] is callback
    with caplog.at_level(logging.WARNING, logger="trl_likelihood.diagnostics"):
        trainer.train()
        metrics = trainer.evaluate()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 3
    for entry in steps:
        assert all(math.isfinite(entry[f"diagnostics/{k}"]) for k in KEYS)
    assert trainer.callback_handler.callbacks[0] is callback
    assert {f"diagnostics/{k}" for k in KEYS} <= reporter.keys  # run first, so reporters see the values
    # The probe is the eval set and `chosen` its completion: TRL's own eval log-prob of the chosen responses
    assert metrics["eval_diagnostics/probe_logp"] == pytest.approx(metrics["eval_logps/chosen"], rel=1e-5)
    assert trainer.state.log_history[-1]["eval_diagnostics/probe_logp"] == metrics["eval_diagnostics/probe_logp"]
    warnings = [r for r in caplog.records if "topk_mass crossed" in r.getMessage()]
    assert len(warnings) == 1  # crossed at all three steps and at the evaluation, reported once


def test_callback_with_mixce_trainer_warns_once_on_a_drop(tiny_model_dir, lm_dataset, tmp_path, caplog):
    callback = LikelihoodDiagnosticsCallback(UNSEEN_PROBE, logp_drop_threshold=1.0, topk_entropy_threshold=0.0)
    args = MixCEConfig(str(tmp_path), eta=0.5, **cpu_args(learning_rate=0.1))
    trainer = MixCETrainer(model=tiny_model_dir, args=args, train_dataset=lm_dataset, callbacks=[callback])
    with caplog.at_level(logging.WARNING, logger="trl_likelihood.diagnostics"):
        trainer.train()
    changes = [h["diagnostics/probe_logp_change"] for h in trainer.state.log_history if "loss" in h]
    assert sum(c < -1.0 for c in changes) >= 2  # measured: -2.8, -0.2, -3.4 nats
    messages = [r.getMessage() for r in caplog.records if r.name == "trl_likelihood.diagnostics"]
    assert len(messages) == 1 and "logp_drop crossed" in messages[0]  # once; the entropy (>= 0) never crosses 0


def test_callback_with_mixce_trainer_under_peft(tiny_model_dir, lm_dataset, tmp_path):
    callback = LikelihoodDiagnosticsCallback(UNSEEN_PROBE, top_k=3)
    trainer = MixCETrainer(
        model=tiny_model_dir,
        args=MixCEConfig(str(tmp_path), eta=0.5, **cpu_args()),
        train_dataset=lm_dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        callbacks=[callback],
    )
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 3 and all(math.isfinite(h[f"diagnostics/{k}"]) for h in steps for k in KEYS)
    assert all(h["diagnostics/topk_entropy"] <= math.log(3) + 1e-6 for h in steps)
    assert [h["stage"] for h in callback.history] == ["start", "train", "train", "train"]


TWO_RANK_SCRIPT = """
import json, logging, sys
from datasets import Dataset
from tests.conftest import cpu_args
from tests.tiny import CORPUS
from trl_likelihood import MixCEConfig, MixCETrainer
from trl_likelihood.diagnostics import LikelihoodDiagnosticsCallback

model_dir, out = sys.argv[1:3]
messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("trl_likelihood.diagnostics").addHandler(handler)
probe = [{"prompt": "the cat", "completion": " zq xj vk"}, {"prompt": "a dog", "completion": " qq zz"}]
callback = LikelihoodDiagnosticsCallback(probe, topk_mass_threshold=0.0)
args = MixCEConfig(out, eta=0.5, **cpu_args(max_steps=2, per_device_train_batch_size=2))
data = Dataset.from_dict({"text": CORPUS[:16]})
trainer = MixCETrainer(model=model_dir, args=args, train_dataset=data, callbacks=[callback])
trainer.train()
with open(f"{out}/diagnostics_{trainer.args.process_index}.json", "w") as f:
    json.dump({"history": callback.history, "warnings": messages, "world": trainer.args.world_size}, f)
"""


@pytest.mark.slow
def test_two_processes_score_the_whole_probe_and_warn_on_rank_zero(tiny_model_dir, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "run.py"
    script.write_text(TWO_RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": repo}
    proc = subprocess.run(
        [*cmd, str(script), tiny_model_dir, str(tmp_path)],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"diagnostics_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert [h["stage"] for h in ranks[0]["history"]] == ["start", "train", "train"]
    assert ranks[0]["history"] == ranks[1]["history"]  # the same weights score the same whole probe on each rank
    assert len(ranks[0]["warnings"]) == 1 and ranks[1]["warnings"] == []
