"""The trainer registry of the reliability contract tests (``tests/test_reliability_*.py``, hostile data, artifacts).

One ``Case`` per trainer: its classes, a small dataset in its format, the method settings every contract test uses,
and per property the settings that make that property's test bite (e.g. resume with precomputed reference log-probs,
DDO crossing a round boundary after the resume). A new trainer is one more entry in ``CASES``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset

from tests.conftest import cpu_args
from tests.tiny import CORPUS
from trl_likelihood import (
    DDOConfig,
    DDOTrainer,
    ImplicitPRMConfig,
    ImplicitPRMTrainer,
    MixCEConfig,
    MixCETrainer,
    SequenceMatchConfig,
    SequenceMatchTrainer,
)
from trl_likelihood.data import validate_sft_dataset
from trl_likelihood.methods import METHODS
from trl_likelihood.prm_data import prepare_prm_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompt_completion_rows(n: int = 24) -> Dataset:
    """Prompt-completion rows of varying length: padding differs between micro-batches and one big batch."""
    rows = [s.split(" ", 3) for s in CORPUS[:n]]
    return Dataset.from_dict(
        {"prompt": [" ".join(r[:3]) for r in rows], "completion": [" " + r[3] if len(r) > 3 else " ." for r in rows]}
    )


def masked_token_rows(rows: int = 16, masked: tuple[int, ...] = (2, 3)) -> list[dict[str, Any]]:
    """Pre-tokenized rows of lengths 5 to 9 (keep ``max_length=None``: SFT drops unscored rows when it truncates);
    the rows in ``masked`` score no token, the others their last three. Read in order with per-device batch 2,
    rows 2 and 3 are the whole first batch of rank 1."""
    out = []
    for i in range(rows):
        ids = [(7 * i + 3 * j) % 250 + 5 for j in range(5 + i % 5)]
        mask = [0] * len(ids) if i in masked else [0] * (len(ids) - 3) + [1] * 3
        out.append({"input_ids": ids, "completion_mask": mask})
    return out


def prm_rows(prompts: int = 12) -> Dataset:
    """Unpaired outcome labels: per prompt one correct and one incorrect response (usable by ``ce`` and ``dpo``)."""
    rows = []
    for i in range(prompts):
        rows.append({"prompt": CORPUS[i][:12], "completion": CORPUS[i][12:], "label": True})
        rows.append({"prompt": CORPUS[i][:12], "completion": CORPUS[i + 50][12:], "label": False})
    return Dataset.from_list(rows)


@dataclass(frozen=True)
class Case:
    """A trainer under the contract tests.

    ``config`` holds the method's settings used everywhere; ``resume``, ``accumulation`` and ``distributed`` are
    added on top for those tests (each a variant the trainer's own tests leave out). ``loss_metrics`` are the logged
    values compared between runs. ``formats`` are the data formats the hostile-data test generates and ``validate``
    the check the trainer runs on them before anything else. ``launch_rows`` is the data of the two-process test
    (default: ``dataset``), written to jsonl for the launch script; trainers that take SFT's pre-tokenized rows get
    rows with nothing to score there, so that one rank's first batch scores no token. ``state_files`` are the
    method's own resume files in a checkpoint (allowed next to the safetensors weights, see test_artifacts).
    """

    name: str
    config_class: type
    trainer_class: type
    dataset: Callable[[], Dataset]
    script: str
    config: dict[str, Any] = field(default_factory=dict)
    resume: dict[str, Any] = field(default_factory=dict)
    accumulation: dict[str, Any] = field(default_factory=dict)
    distributed: dict[str, Any] = field(default_factory=dict)
    launch_rows: Callable[[], list[dict[str, Any]]] | None = None
    formats: tuple[str, ...] = ("text", "prompt_completion", "messages")
    validate: Callable[[Dataset, Any], Any] = validate_sft_dataset
    state_files: tuple[str, ...] = ()
    loss_metrics: tuple[str, ...] = ("loss",)

    def args(self, output_dir: str, *variants: dict[str, Any], **training: Any) -> Any:
        """The config: CPU test defaults (``cpu_args``), then ``training``, then the method settings and variants."""
        method = {k: v for d in (self.config, *variants) for k, v in d.items()}
        return self.config_class(str(output_dir), **method, **cpu_args(**training))

    def trainer(self, model: Any, args: Any, dataset: Dataset | None = None, **kwargs: Any) -> Any:
        train = self.dataset() if dataset is None else dataset
        return self.trainer_class(model=model, args=args, train_dataset=train, **kwargs)

    def with_config(self, **settings: Any) -> Case:
        return dataclasses.replace(self, config={**self.config, **settings})


CASES: dict[str, Case] = {
    "mixce": Case(
        name="mixce",
        config_class=MixCEConfig,
        trainer_class=MixCETrainer,
        dataset=prompt_completion_rows,
        script=os.path.join(REPO, METHODS["mixce"].script),
        config={"eta": 0.3},
        accumulation={"eta": 0.0},  # DFT, completion-only: test_mixce_trainer covers eta=0.3 on plain text
        distributed={"max_length": None, "completion_only_loss": True},
        launch_rows=masked_token_rows,
        loss_metrics=("loss", "mixce/forward_nll"),
    ),
    "implicit_prm": Case(
        name="implicit_prm",
        config_class=ImplicitPRMConfig,
        trainer_class=ImplicitPRMTrainer,
        dataset=prm_rows,
        script=os.path.join(REPO, METHODS["implicit-prm"].script),
        config={"beta": 0.5, "stepwise": False},  # "completions"/"labels": a group of responses
        resume={"precompute_ref_log_probs": True},
        accumulation={"loss_type": "dpo"},  # test_implicit_prm_trainer covers ce
        distributed={"loss_type": "dpo"},  # test_distributed covers ce (LoRA)
        loss_metrics=("loss", "prm/reward_correct", "prm/reward_incorrect"),
        formats=("prm_unpaired", "prm_grouped", "prm_paired"),
        validate=lambda dataset, args: prepare_prm_dataset(dataset, args, "train_dataset"),
    ),
    "ddo": Case(
        name="ddo",
        config_class=DDOConfig,
        trainer_class=DDOTrainer,
        dataset=prompt_completion_rows,
        script=os.path.join(REPO, METHODS["ddo"].script),
        config={"beta": 0.5, "max_new_tokens": 8},
        # Checkpoint in round 1, resume crosses into round 2 (test_ddo_trainer resumes inside round 2).
        resume={"num_rounds": 2},
        # Near-greedy fakes: the same whatever the micro-batch or rank seed, so runs can be compared exactly.
        accumulation={"alpha": 2.0, "temperature": 1e-4},
        distributed={"temperature": 1e-4, "max_length": None, "completion_only_loss": True},
        launch_rows=masked_token_rows,
        loss_metrics=("loss", "ddo/real_logratio", "ddo/fake_logratio"),
        state_files=("ddo_round.pt", "ddo_pool_rank0.pt"),  # round, reference weights, fake pool (loaded weights_only)
    ),
    "sequencematch": Case(
        name="sequencematch",
        config_class=SequenceMatchConfig,
        trainer_class=SequenceMatchTrainer,
        dataset=prompt_completion_rows,
        script=os.path.join(REPO, METHODS["sequencematch"].script),
        config={"noise_prob": 0.3, "rollouts_per_refresh": 4, "rollout_max_new_tokens": 8, "replay_refresh_steps": 2},
        # A row's noise is seeded by its tokens, not its micro-batch: with noise on, only rollouts (drawn per
        # micro-batch and rank) make split runs differ, so those are off here.
        accumulation={"rollouts_per_step": 0},
        distributed={"max_length": None, "completion_only_loss": True, "rollouts_per_step": 0},
        launch_rows=masked_token_rows,
        loss_metrics=("loss", "sequencematch/bc_loss", "sequencematch/chi2"),
        state_files=("sequencematch_buffer_rank0.pt",),  # the replay buffer (token lists, loaded weights_only)
    ),
}


def losses(trainer: Any, keys: tuple[str, ...] = ("loss",)) -> list[dict[str, float]]:
    """The logged training steps, restricted to ``step`` and ``keys``."""
    return [{k: h[k] for k in ("step", *keys)} for h in trainer.state.log_history if "loss" in h]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, detached and cloned (trainable or not: a frozen weight that moved is a failure too)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
