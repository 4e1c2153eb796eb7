"""The engine matrix's cells: each trainer, full and LoRA, with each reference source, on small fixed data.

Shared by the worker (which trains every cell under one engine) and ``tests/test_engines.py`` (which compares the
engines' results with DDP's). Settings are the defaults a user gets where the engines used to break: DDO samples
fakes as long as the batch's longest completion, SequenceMatch rollouts take the default length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from tests.conftest import cpu_args
from tests.reliability import CASES, prm_rows, prompt_completion_rows
from tests.tiny import CORPUS
from trl_likelihood.trainers import StepwisePRMConfig, StepwisePRMTrainer

STEPS, SAVE_AT, BATCH = 4, 2, 2


def LOGIT_INPUTS(tokenizer: Any) -> list[list[int]]:  # noqa: N802  (a constant-like function of the tokenizer)
    """Two fixed rows the trained and the reloaded model are both run on."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return [tok(CORPUS[i])["input_ids"][:10] for i in (0, 1)]


def stepwise_rows(n: int = 16) -> Dataset:
    """TRL's stepwise supervision from the corpus: two or three steps a row, the later ones sometimes wrong."""
    rows = [CORPUS[i % len(CORPUS)].split(" ") * 3 for i in range(n)]  # short lines repeat: no empty step
    steps = [[" ".join(w[1:3]), " ".join(w[3:5]), " ".join(w[5:7])][: 2 + i % 2] for i, w in enumerate(rows)]
    return Dataset.from_dict(
        {
            "prompt": [w[0] for w in rows],
            "completions": steps,
            "labels": [[True] + [(i + j) % 3 != 0 for j in range(1, len(s))] for i, s in enumerate(steps)],
        }
    )


def _case(method: str) -> Any:
    """The ``tests.reliability`` case; the explicit stepwise PRM is none (its data and model head are its own)."""
    if method == "stepwise_prm":
        return dataclasses.replace(
            CASES["mixce"], name=method, config_class=StepwisePRMConfig, trainer_class=StepwisePRMTrainer, config={}
        )
    return CASES[method]


@dataclass(frozen=True)
class Cell:
    """One trainer configuration: ``method`` names a ``tests.reliability`` case; ``reference`` is the implicit
    reference source (``"model"``: an explicit ``ref_model`` loaded from the same folder)."""

    method: str
    lora: bool
    reference: str = "default"
    settings: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def args(self, output_dir: str) -> Any:
        case = _case(self.method)
        training = cpu_args(
            **{
                "max_steps": STEPS,
                "per_device_train_batch_size": BATCH,
                "learning_rate": 1e-3,
                "save_strategy": "steps",
                "save_steps": SAVE_AT,
                "save_only_model": False,
                **self.training,
            }
        )
        return case.config_class(output_dir, **{**case.config, **self.settings}, **training)

    def trainer(self, model_dir: str, args: Any, peft_config: Any) -> Any:
        data: Callable[[], Any] = {"implicit_prm": prm_rows, "stepwise_prm": stepwise_rows}.get(
            self.method, prompt_completion_rows
        )
        kwargs: dict[str, Any] = {"peft_config": peft_config}
        if self.reference == "model":
            kwargs["ref_model"] = model_dir
        return _case(self.method).trainer_class(model=model_dir, args=args, train_dataset=data(), **kwargs)

    def with_settings(self, **settings: Any) -> Cell:
        return dataclasses.replace(self, settings={**self.settings, **settings})


_DDO = {"num_rounds": 2, "round_steps": 1, "max_new_tokens": None}  # round 2 from step 1: the checkpoint holds its ref
_SM = {"rollout_max_new_tokens": None, "replay_refresh_steps": 2, "rollouts_per_refresh": 4}
_PRE = {"precompute_ref_log_probs": True}

CELLS: dict[str, Cell] = {
    "mixce-full": Cell("mixce", lora=False),
    "mixce-lora": Cell("mixce", lora=True),
    "prm-adapter-lora": Cell("implicit_prm", lora=True),
    "prm-copy-full": Cell("implicit_prm", lora=False),
    "prm-model-full": Cell("implicit_prm", lora=False, reference="model"),
    "prm-model-lora": Cell("implicit_prm", lora=True, reference="model"),
    "prm-precomputed-full": Cell("implicit_prm", lora=False, settings=_PRE),
    "prm-precomputed-lora": Cell("implicit_prm", lora=True, settings=_PRE),
    "ddo-full": Cell("ddo", lora=False, settings=_DDO),
    "ddo-lora": Cell("ddo", lora=True, settings=_DDO),
    "sequencematch-full": Cell("sequencematch", lora=False, settings=_SM),
    "sequencematch-lora": Cell("sequencematch", lora=True, settings=_SM),
    "stepwise-prm-full": Cell("stepwise_prm", lora=False),
    "stepwise-prm-lora": Cell("stepwise_prm", lora=True),
}

# bf16 at theta = theta_ref (learning rate 0): the reference must run in the policy's precision under each engine's
# own mixed precision (autocast, DeepSpeed's bf16 weights, FSDP2's param dtype). One launch of their own per engine:
# accelerate's mixed precision is set once per process.
_BF16 = {"bf16": True, "learning_rate": 0.0}
BF16_CELLS: dict[str, Cell] = {
    "bf16-prm-copy-full": Cell("implicit_prm", lora=False, training=_BF16),  # a separate frozen reference model
    "bf16-ddo-lora": Cell("ddo", lora=True, settings=_DDO, training=_BF16),  # adapter off, sampled first, 2 rounds
}
