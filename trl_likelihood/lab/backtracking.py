"""SequenceMatch vs BC vs MLE on digit addition: does backtracking recover from corrupted prefixes?
Protocol: ALGORITHMS.md 3(g), with its calibration notes.

    MLE  : SFTTrainer on clean data, warm_steps + arm_steps                    (never sees <bkspc>)
    BC   : SequenceMatchTrainer(sm_weight=0) on noise-augmented data, warm_steps + arm_steps
    SM   : the BC warm start, then arm_steps of (1 - sm_weight) L_BC + sm_weight L_SM with replay-buffer rollouts

Every arm starts from the same initial weights, sees the same data order and is read after the same number of steps
(the BC and SM arms share their first ``warm_steps``, the paper's BC warm start). The control that passes if the method
learnt nothing is the MLE arm: it cannot delete a forced wrong digit, so its recovery is ~0 by construction. The
terminal is the absorbing state padded to the batch's longest trajectory (the calibration's best option), the
SequenceMatch trainer's default.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from ..trainers import SequenceMatchConfig, SequenceMatchTrainer
from .addition import AdditionTask, addition_metrics
from .experiments import _fit, _lab_args
from .models import tiny_causal_lm


@dataclass
class SMSetup:
    """One seed's task, model and schedule; the defaults are the calibrated setting of ALGORITHMS.md 3(g)."""

    seed: int = 0
    digits: int = 2
    n_train: int = 5000
    n_test: int = 1000
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    warm_steps: int = 2000
    arm_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    noise_prob: float = 0.1
    chi2_coef: float = 0.5
    sm_weight: float = 0.5
    replay_buffer_size: int = 512
    replay_refresh_steps: int = 100
    rollouts_per_refresh: int = 256
    eval_problems: int = 1000
    extra_args: dict[str, Any] = field(default_factory=dict)


def _config(setup: SMSetup, output_dir: str, steps: int, task: AdditionTask, **method: Any) -> dict[str, Any]:
    return dict(
        output_dir=output_dir,
        **_lab_args(
            max_steps=steps,
            max_length=task.seq_len,
            seed=setup.seed,
            batch_size=setup.batch_size,
            learning_rate=setup.learning_rate,
            extra=setup.extra_args,
        ),
        **method,
    )


def sequencematch_trainer(
    setup: SMSetup, model: Any, output_dir: str, steps: int, task: AdditionTask, sm_weight: float
) -> SequenceMatchTrainer:
    """The BC (``sm_weight=0``) or SequenceMatch arm of ``setup``, ready to train."""
    config = SequenceMatchConfig(
        **_config(
            setup,
            output_dir,
            steps,
            task,
            noise_prob=setup.noise_prob,
            sm_weight=sm_weight,
            chi2_coef=setup.chi2_coef,
            replay_buffer_size=setup.replay_buffer_size,
            replay_refresh_steps=setup.replay_refresh_steps,
            rollouts_per_refresh=setup.rollouts_per_refresh,
            rollout_max_new_tokens=2 * (task.digits + 1) + 4,
        )
    )
    return SequenceMatchTrainer(
        model, args=config, train_dataset=task.dataset("train"), processing_class=task.tokenizer()
    )


def mle_trainer(setup: SMSetup, model: Any, output_dir: str, steps: int, task: AdditionTask) -> SFTTrainer:
    """The MLE control of ``setup`` (``SFTTrainer`` on clean data), ready to train."""
    config = SFTConfig(**_config(setup, output_dir, steps, task))
    return SFTTrainer(model, args=config, train_dataset=task.dataset("train"), processing_class=task.tokenizer())


def addition_task(setup: SMSetup) -> AdditionTask:
    """The addition task of ``setup`` (its digits, split sizes and seed)."""
    return AdditionTask(digits=setup.digits, n_train=setup.n_train, n_test=setup.n_test, seed=setup.seed)


def initial_model(setup: SMSetup, task: AdditionTask) -> Any:
    """The fresh model every arm of ``setup`` starts from (the same weights for the same seed)."""
    return tiny_causal_lm(
        task.tokenizer(), setup.hidden_size, setup.num_layers, setup.num_heads, max_positions=task.seq_len + 8,
        seed=setup.seed,
    )  # fmt: skip


def arm_metrics(setup: SMSetup, task: AdditionTask, model: Any) -> dict[str, float]:
    """``addition_metrics`` of an arm on ``setup.eval_problems`` problems, drawn alike for every arm."""
    return addition_metrics(model, task, n=setup.eval_problems, seed=setup.seed + 1000)


def sequencematch_vs_bc(
    setup: SMSetup, output_dir: str, on_arm: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the two warm starts and the three arms; return ``{"metrics": {arm: addition_metrics}, "trainers": ...}``.

    Arms: ``"MLE"``, ``"BC"``, ``"SM"`` (all at ``warm_steps + arm_steps``), plus ``"BC-warm"`` (at ``warm_steps``).
    ``on_arm(name)`` is called after each stage (a progress bar hooks in here).
    """
    task = addition_task(setup)

    def done(name: str) -> None:
        if on_arm:
            on_arm(name)

    metrics, trainers = {}, {}
    mle_warm = os.path.join(output_dir, "mle-warm")
    _fit(mle_trainer(setup, initial_model(setup, task), mle_warm, setup.warm_steps, task)).save_model(mle_warm)
    done("MLE warm start")
    bc_warm = os.path.join(output_dir, "bc-warm")
    warm = _fit(
        sequencematch_trainer(setup, initial_model(setup, task), bc_warm, setup.warm_steps, task, sm_weight=0.0)
    )
    warm.save_model(bc_warm)
    metrics["BC-warm"] = arm_metrics(setup, task, warm.model)
    done("BC warm start")
    trainers["MLE"] = _fit(
        mle_trainer(setup, AutoModelForCausalLM.from_pretrained(mle_warm), f"{output_dir}/mle", setup.arm_steps, task)
    )
    metrics["MLE"] = arm_metrics(setup, task, trainers["MLE"].model)
    done("MLE")
    for name, weight in (("BC", 0.0), ("SM", setup.sm_weight)):
        model = AutoModelForCausalLM.from_pretrained(bc_warm)
        out = f"{output_dir}/{name.lower()}"
        trainers[name] = _fit(sequencematch_trainer(setup, model, out, setup.arm_steps, task, weight))
        metrics[name] = arm_metrics(setup, task, trainers[name].model)
        done(name)
    return {"metrics": metrics, "trainers": trainers, "task": task, "setup": asdict(setup)}
