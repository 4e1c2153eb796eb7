"""The lab's experiment protocols, shared by the efficacy test, the benchmarks and ``trl-likelihood demo``.

MixCE vs MLE (ALGORITHMS.md 2(g)): a capacity-limited model, an MLE warm start saved to disk, then one arm per eta
continued from it for the same number of steps with the same data order and seed; every arm is read at its last step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PrinterCallback

from ..trainers import MixCEConfig, MixCETrainer
from .bigram import BigramTask
from .metrics import bigram_metrics
from .models import tiny_causal_lm


@dataclass
class MixCESetup:
    """One seed's task, data and model sizes; defaults are the calibrated single-seed efficacy setting."""

    seed: int = 0
    vocab_size: int = 24
    max_len: int = 32
    hidden_size: int = 16  # below the 26 ids: the model cannot represent P exactly, where MixCE helps
    train_size: int = 2000
    warm_steps: int = 200
    arm_steps: int = 300
    batch_size: int = 64
    learning_rate: float = 3e-3  # constant, so that every arm keeps moving until its last step
    eval_sequences: int = 1000
    eval_samples: int = 2000
    extra_args: dict[str, Any] = field(default_factory=dict)


def _train(
    model: Any, output_dir: str, eta: float, steps: int, setup: MixCESetup, task: BigramTask, dataset, tokenizer
) -> MixCETrainer:
    args = MixCEConfig(
        output_dir,
        eta=eta,
        max_steps=steps,
        per_device_train_batch_size=setup.batch_size,
        learning_rate=setup.learning_rate,
        lr_scheduler_type="constant",
        max_length=task.max_len + 1,
        seed=setup.seed,  # same seed: same data order in every arm
        logging_steps=steps,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,  # pointless at this size, and twice the compute
        disable_tqdm=True,
        **setup.extra_args,
    )
    trainer = MixCETrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # with tqdm off, it prints every log dict; the caller reports instead
    trainer.train()
    return trainer


def mixce_vs_mle(
    setup: MixCESetup,
    etas: Sequence[float],
    output_dir: str,
    on_arm: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the warm start and one arm per eta (``1.0`` is the MLE control); return metrics, trainers and the task.

    Returns ``{"metrics": {"init"|"warm"|"eta=<x>": {...}}, "trainers": {"eta=<x>": MixCETrainer}, "task": task}``.
    ``on_arm(name)`` is called after each stage (a progress bar hooks in here).
    """
    task = BigramTask(vocab_size=setup.vocab_size, max_len=setup.max_len, seed=setup.seed)
    tokenizer, dataset = task.tokenizer(), task.dataset(setup.train_size, seed=setup.seed + 100)
    evaluate = dict(task=task, num_sequences=setup.eval_sequences, num_samples=setup.eval_samples)
    evaluate["seed"] = setup.seed + 1000  # held out: not the training data's seed
    start = tiny_causal_lm(tokenizer, hidden_size=setup.hidden_size, seed=setup.seed)
    metrics = {"init": bigram_metrics(start, **evaluate)}
    warm_dir = os.path.join(output_dir, "warm-start")
    warm = _train(start, warm_dir, 1.0, setup.warm_steps, setup, task, dataset, tokenizer)
    warm.save_model(warm_dir)
    metrics["warm"] = bigram_metrics(warm.model, **evaluate)
    if on_arm:
        on_arm("warm")
    trainers = {}
    for eta in etas:
        name = f"eta={eta:g}"
        arm_dir = os.path.join(output_dir, f"mixce-eta{eta:g}" if eta < 1 else "mle")
        trainers[name] = _train(warm_dir, arm_dir, eta, setup.arm_steps, setup, task, dataset, tokenizer)
        metrics[name] = bigram_metrics(trainers[name].model, **evaluate)
        if on_arm:
            on_arm(name)
    return {"metrics": metrics, "trainers": trainers, "task": task}
