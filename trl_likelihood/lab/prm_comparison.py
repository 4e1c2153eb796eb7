"""Implicit vs explicit PRMs at equal label budgets on chained modular addition with bug cells (ALGORITHMS.md 4(g)),
where every step's correctness is known exactly: the comparison of Yuan et al. (2024), section 4(e), at lab scale.

Per seed, one pi_ref (MLE on the noisy solver); per label budget B (labelled solver responses, 4 per prompt), every
arm starts from pi_ref's folder and sees the same B responses, labelled differently:

- ``implicit_ce`` / ``implicit_dpo``: ``ImplicitPRMTrainer`` on the B outcome labels (DPO pairs every correct with
  every incorrect response of a prompt).
- ``explicit_exact``: ``StepwisePRMTrainer`` (a token classifier on pi_ref's body, new 2-way head) on the exact local
  correctness of each step, B x K labels: what a careful human annotator would give, the upper bound of step labels.
- ``explicit_shepherd``: the same classifier on Math-Shepherd labels (Wang et al., 2024, arXiv:2312.08935, "hard
  estimation"): step t is good iff any of ``k`` continuations sampled from pi_ref after steps 1..t reaches the right
  final answer; the last step's label is the response's own outcome. Cost: B x (K-1) x k rollouts.

Controls, scored once per seed: log pi_ref (prefers the bug values) and a random scorer.

Choices made here:
- Same optimizer steps per label: every arm trains ``epochs`` passes over its own rows (responses; DPO: pairs) at batch
  64 and lr 1e-3, constant; so CE and both explicit arms take exactly the same steps at each budget.
- Step scores: the implicit PRM's ``r_t`` (``beta * log pi/pi_ref`` over the step's tokens), the classifier's
  log-odds at the step's last token; best-of-N by the min over steps for every arm.
- First-error F1 (ProcessBench, ``prm_evaluation``) with the threshold picked on a dev split of solver responses (seed
  998), reported on the held-out split of ``run_prm_efficacy`` (seed 1000).
- Math-Shepherd labels mark a step bad once an earlier step went wrong (no continuation can recover), i.e. they label
  prefix correctness; the metrics score local correctness, which only the exact labels give.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel

from ..prm_evaluation import best_threshold, first_error_scores
from ..scoring import ImplicitPRM
from ..stepwise_prm import StepwisePRM
from ..trainers import ImplicitPRMConfig, ImplicitPRMTrainer, StepwisePRMConfig, StepwisePRMTrainer
from .experiments import _fit, _lab_args
from .modarith import ModArithTask, Rollouts, load_reference, train_reference
from .prm_metrics import LogLikelihoodScorer, RandomScorer, StepScorer, _score, run_prm_efficacy, sample_values

ARMS = ("implicit_ce", "implicit_dpo", "explicit_exact", "explicit_shepherd")
CONTROLS = ("log_pi_ref", "random")
DEV_SEED, EVAL_SEED = 998, 1000  # held out: training data uses seeds seed + 5 (and pi_ref seed 1)


@dataclass
class ComparisonSetup:
    """One seed of the comparison; defaults are the benchmark's (the implicit PRM's calibrated lab setting)."""

    seed: int = 0
    budgets: Sequence[int] = (500, 1000, 3000, 10_000)
    arms: Sequence[str] = ARMS
    shepherd_k: int = 8  # continuations per step, as Math-Shepherd (N = 8 on GSM8K and MATH)
    beta: float = 0.5
    epochs: float = 2.0  # the rule: the same passes (so optimizer steps per label) for every arm
    batch_size: int = 64
    learning_rate: float = 1e-3
    responses_per_prompt: int = 4  # DPO pairs responses of a prompt; every arm sees the same responses
    num_eval: int = 2000
    num_dev: int = 1000
    num_prompts: int = 500
    ns: Sequence[int] = (4, 16)


def stepwise_dataset(task: ModArithTask, rollouts: Rollouts, labels: np.ndarray) -> Dataset:
    """TRL's stepwise format: ``prompt``, ``completions`` (the step texts ``"o v"``), ``labels`` (one bool each)."""
    return Dataset.from_dict(
        {
            "prompt": task.prompt_texts(rollouts),
            "completions": task.step_texts(rollouts),
            "labels": np.asarray(labels, dtype=bool).tolist(),
        }
    )


def outcome_dataset(task: ModArithTask, rollouts: Rollouts) -> Dataset:
    """The same responses as TRL's unpaired ``prompt, completion, label`` (the implicit PRM's data)."""
    completions = [task.step_separator.join(steps) for steps in task.step_texts(rollouts)]
    return Dataset.from_dict(
        {"prompt": task.prompt_texts(rollouts), "completion": completions, "label": rollouts.label.tolist()}
    )


def math_shepherd_labels(
    task: ModArithTask, reference: PreTrainedModel, rollouts: Rollouts, k: int, seed: int, batch_size: int = 4096
) -> tuple[np.ndarray, dict[str, int]]:
    """Math-Shepherd "hard estimation" step labels: step t is good iff one of ``k`` pi_ref continuations (temperature
    1, ``sample_values``) after steps 1..t ends at the right answer; the last step's label is the outcome itself.

    Returns:
        ``(n, K)`` bool labels, and the cost: ``rollouts`` (n (K-1) k continuations, each checked against the answer),
        ``sampled_tokens`` (value tokens drawn from pi_ref) and ``continuation_tokens`` (every response token of the
        continuations, operands and separators included, which the forced format writes without sampling).
    """
    n, num_ops = len(rollouts), task.num_ops
    labels = np.zeros((n, num_ops), dtype=bool)
    labels[:, -1] = rollouts.label
    truth = (rollouts.x0 + rollouts.ops.sum(1)) % task.modulus
    generator = torch.Generator().manual_seed(seed)
    x0, ops, values = rollouts.x0.repeat(k), rollouts.ops.repeat(k, axis=0), rollouts.values.repeat(k, axis=0)
    sampled = 0
    for step in range(num_ops - 1):  # continue after step `step` (0-based): steps step+1..K-1 are sampled
        continued = sample_values(reference.eval(), task, x0, ops, values, step + 1, generator, 1.0, batch_size)
        labels[:, step] = (continued[:, -1] == truth.repeat(k)).reshape(n, k).any(-1)
        sampled += n * k * (num_ops - 1 - step)
    cost = {"rollouts": n * k * (num_ops - 1), "sampled_tokens": sampled, "continuation_tokens": 3 * sampled}
    return labels, cost


def first_error_f1(scorer: StepScorer, task: ModArithTask, dev: Dataset, test: Dataset) -> dict[str, float]:
    """ProcessBench F1 (and its two accuracies) on ``test``, the threshold picked on ``dev``; labels = local
    correctness, so the first wrong step is the first error."""

    def scores_and_labels(data: Dataset) -> tuple[np.ndarray, list]:
        cols = data[:]
        return _score(scorer, cols["prompt"], cols["steps"]), cols["step_correct"]

    threshold = best_threshold(*scores_and_labels(dev))
    result = first_error_scores(*scores_and_labels(test), threshold)
    return {
        "first_error_f1": result["f1"],
        "first_error_acc_erroneous": result["error_accuracy"],
        "first_error_acc_correct": result["correct_accuracy"],
    }


def _train_arm(
    arm: str, setup: ComparisonSetup, ref_dir: str, out_dir: str, task: ModArithTask, data: Dataset, tokenizer
) -> object:
    common = _lab_args(
        num_train_epochs=setup.epochs,
        max_length=64,
        seed=setup.seed,
        batch_size=setup.batch_size,
        learning_rate=setup.learning_rate,
    )
    if arm.startswith("implicit"):
        loss_type = arm.split("_")[1]
        args = ImplicitPRMConfig(out_dir, beta=setup.beta, loss_type=loss_type, **common)
        return _fit(ImplicitPRMTrainer(ref_dir, args=args, train_dataset=data, processing_class=tokenizer))
    args = StepwisePRMConfig(out_dir, step_separator=task.step_separator, **common)
    return _fit(StepwisePRMTrainer(ref_dir, args=args, train_dataset=data, processing_class=tokenizer))


def compare_prms(
    setup: ComparisonSetup, output_dir: str, on_stage: Callable[[str], None] | None = None
) -> dict[str, dict[str, float]]:
    """Train pi_ref (cached in ``output_dir``), then every arm at every budget; score all on the same held-out data.

    Returns ``{"<arm>@<budget>": metrics, "log_pi_ref": ..., "random": ..., "baselines": ..., "reference": ...}``.
    An arm's metrics are ``step_metrics``, ``best_of_n_accuracy``, ``first_error_f1`` and its labelling cost
    (``outcome_labels``, ``step_labels``, ``rollouts``, ``sampled_tokens``, ``continuation_tokens``) with
    ``train_steps`` and ``train_seconds``.
    """
    unknown = set(setup.arms) - set(ARMS)
    if unknown:
        raise ValueError(f"`arms` must be among {ARMS}, got {sorted(unknown)}.")
    task = ModArithTask(seed=setup.seed)
    ref_dir = train_reference(task, os.path.join(output_dir, "reference"), seed=setup.seed)
    reference, tokenizer = load_reference(ref_dir)
    dev, test = task.step_dataset(setup.num_dev, DEV_SEED), task.step_dataset(setup.num_eval, EVAL_SEED)
    evaluate = dict(num_eval=setup.num_eval, num_prompts=setup.num_prompts, ns=setup.ns, seed=EVAL_SEED)
    controls = {
        "log_pi_ref": LogLikelihoodScorer(reference, tokenizer, task.step_separator),
        "random": RandomScorer(EVAL_SEED + setup.seed),
    }
    results = run_prm_efficacy(task, reference, controls, controls=False, **evaluate)
    for name, scorer in controls.items():
        results[name] |= first_error_f1(scorer, task, dev, test)
    if on_stage:
        on_stage("reference and controls")
    for budget in setup.budgets:
        rollouts = task.solve(budget, setup.seed + 5, setup.responses_per_prompt)
        costs: dict[str, dict[str, int]] = {}
        datasets: dict[str, Dataset] = {}
        for arm in setup.arms:
            free = {"outcome_labels": 0, "step_labels": 0, "rollouts": 0, "sampled_tokens": 0}
            if arm.startswith("implicit"):
                datasets[arm], costs[arm] = outcome_dataset(task, rollouts), free | {"outcome_labels": len(rollouts)}
            elif arm == "explicit_exact":
                datasets[arm] = stepwise_dataset(task, rollouts, rollouts.correct)
                costs[arm] = free | {"step_labels": rollouts.correct.size}
            else:
                labels, cost = math_shepherd_labels(task, reference, rollouts, setup.shepherd_k, setup.seed + 7)
                datasets[arm] = stepwise_dataset(task, rollouts, labels)
                # every rollout's answer is checked, as is each response's own: automatic outcome labels
                costs[arm] = free | cost | {"outcome_labels": len(rollouts) + cost["rollouts"]}
                costs[arm]["label_agreement"] = float((labels == rollouts.correct).mean())  # with the exact labels
        scorers = {}
        for arm in setup.arms:
            start = time.perf_counter()
            out_dir = os.path.join(output_dir, f"{arm}-{budget}")
            trainer = _train_arm(arm, setup, ref_dir, out_dir, task, datasets[arm], tokenizer)
            costs[arm] |= {"train_steps": trainer.state.global_step, "train_seconds": time.perf_counter() - start}
            model = trainer.model.eval()
            if arm.startswith("implicit"):
                prm = ImplicitPRM(model, reference, tokenizer, beta=setup.beta, step_separator=task.step_separator,
                                  batch_size=512)  # fmt: skip
            else:
                prm = StepwisePRM(model, tokenizer, step_separator=task.step_separator, batch_size=512)
            scorers[arm] = prm.score
        scored = run_prm_efficacy(task, reference, scorers, controls=False, **evaluate)
        for arm, scorer in scorers.items():
            results[f"{arm}@{budget}"] = scored[arm] | first_error_f1(scorer, task, dev, test) | costs[arm]
        if on_stage:
            on_stage(f"budget {budget}")
    return results
