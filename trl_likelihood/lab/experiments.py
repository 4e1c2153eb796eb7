"""The lab's experiment protocols, shared by the efficacy tests, the benchmarks and ``trl-likelihood demo``.

MixCE vs MLE (ALGORITHMS.md 2(g)): a capacity-limited model, an MLE warm start saved to disk, then one arm per eta
continued from it for the same number of steps with the same data order and seed; every arm is read at its last step.

Implicit PRM vs controls (ALGORITHMS.md 4(g)): pi_ref trained by MLE on a noisy solver with systematic bug cells, a PRM
trained from pi_ref on outcome labels only, then step-level metrics against the reference's own log-likelihood (which
prefers the bug values), a random scorer, random selection, majority vote and the oracle.

DDO vs MLE (ALGORITHMS.md 5(g)): fixed-length sequences without EOS, an over-dispersed reference (MLE with label
smoothing) saved to disk, then continued MLE and DDO from it for the same number of steps, read at each round's end;
optionally the same from a negative-control reference trained by MLE without smoothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..modeling import eval_mode
from ..trainers import DDOConfig, DDOTrainer, ImplicitPRMConfig, ImplicitPRMTrainer, MixCEConfig, MixCETrainer
from .bigram import BigramTask
from .metrics import bigram_metrics, sample_diversity, sample_model
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


def quiet_logs() -> None:
    """Keep a lab run's console to its results: no progress bars or info logs from transformers and datasets, and no
    FutureWarning (transformers 5.2x renames ``gradient_checkpointing``). The demo and the efficacy scripts call it."""
    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _lab_args(
    seed: int, batch_size: int, learning_rate: float, extra: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Training arguments every lab run shares: quiet, deterministic, CPU, no checkpoints; ``extra`` wins."""
    defaults = dict(
        lr_scheduler_type="constant",  # so that every arm keeps moving until its last step
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=kwargs.get("max_steps", 20),
        seed=seed,  # same seed: same data order in every arm
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,  # pointless at this size, and twice the compute
        disable_tqdm=True,
    )
    return {**defaults, **kwargs, **(extra or {})}


def _fit(trainer: Any, callback: TrainerCallback | None = None) -> Any:
    trainer.remove_callback(PrinterCallback)  # with tqdm off, it prints every log dict; the caller reports instead
    if callback is not None:
        trainer.add_callback(callback)
    trainer.train()
    return trainer


def _train(
    model: Any, output_dir: str, eta: float, steps: int, setup: MixCESetup, task: BigramTask, dataset, tokenizer
) -> MixCETrainer:
    args = MixCEConfig(
        output_dir,
        eta=eta,
        **_lab_args(
            max_steps=steps,
            max_length=task.max_len + 1,
            seed=setup.seed,
            batch_size=setup.batch_size,
            learning_rate=setup.learning_rate,
            extra=setup.extra_args,
        ),
    )
    return _fit(MixCETrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer))


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


@dataclass
class PRMSetup:
    """One seed of the implicit-PRM study; defaults are the calibrated single-seed setting (about a minute on CPU)."""

    seed: int = 0
    num_labels: int = 3000  # beta = 0.5 reaches bug-cell AUROC ~0.98 with 3k labels (ALGORITHMS.md 4(g))
    beta: float = 0.5
    loss_type: str = "ce"
    epochs: float = 2.0
    batch_size: int = 64
    learning_rate: float = 1e-3
    responses_per_prompt: int = 1  # dpo needs several (it pairs correct x incorrect responses of a prompt)
    num_eval: int = 2000
    num_prompts: int = 500


def implicit_prm_vs_controls(setup: PRMSetup, output_dir: str, on_stage: Callable[[str], None] | None = None) -> dict:
    """Train pi_ref (cached in ``output_dir``), then the PRM on outcome labels; score every arm on held-out data.

    Returns ``run_prm_efficacy``'s dict (``implicit_prm``, ``log_pi_ref``, ``random``, ``baselines``, ``reference``)
    plus ``trainer`` (the PRM's trainer) and ``task``.
    """
    from ..scoring import ImplicitPRM
    from .modarith import ModArithTask, load_reference, train_reference
    from .prm_metrics import run_prm_efficacy

    task = ModArithTask(seed=setup.seed)
    ref_dir = train_reference(task, os.path.join(output_dir, "reference"), seed=setup.seed)
    if on_stage:
        on_stage("reference")
    reference, tokenizer = load_reference(ref_dir)
    args = ImplicitPRMConfig(
        os.path.join(output_dir, f"implicit-prm-{setup.loss_type}"),
        beta=setup.beta,
        loss_type=setup.loss_type,
        **_lab_args(
            num_train_epochs=setup.epochs,
            max_length=64,
            seed=setup.seed,
            batch_size=setup.batch_size,
            learning_rate=setup.learning_rate,
        ),
    )
    labels = task.outcome_dataset(
        setup.num_labels, setup.seed + 5, setup.responses_per_prompt
    )  # the evaluation uses seeds 1000 and 1001
    trainer = _fit(ImplicitPRMTrainer(ref_dir, args=args, train_dataset=labels, processing_class=tokenizer))
    if on_stage:
        on_stage("implicit PRM")
    prm = ImplicitPRM(
        trainer.model, reference, tokenizer, beta=setup.beta, step_separator=task.step_separator, batch_size=512
    )
    results = run_prm_efficacy(
        task, reference, scorers={"implicit_prm": prm.score}, num_eval=setup.num_eval, num_prompts=setup.num_prompts
    )
    return {**results, "trainer": trainer, "task": task}


@dataclass
class DDOSetup:
    """One seed of the DDO study (ALGORITHMS.md 5(g)); defaults are the calibrated single-seed efficacy setting.

    The task has fixed-length sequences and no EOS, so fakes are as long as real rows (only a reference sample of the
    impossible EOS ends one early) and length is no cue. The reference is MLE with label smoothing (over-dispersed:
    DDO's mode-covering premise); the negative control is MLE without smoothing. alpha 1, beta 0.5 beat continued
    MLE on invalid rate and impossible mass after one round of 150 steps (3 seeds, ``benchmarks/efficacy_ddo.py``);
    in a seed-0 sweep beta 1.0 did not, and alpha 2 matched it at nearly twice the JS.

    The default negative control (600 steps on the shared 5,000 rows) is not at P's within-family optimum: it
    over-fits the finite sample and continued MLE still improves it. The ``control_*`` fields build a proper one
    (``DDO_OPTIMAL_CONTROL``: one pass over 260,000 fresh rows, batch 256, cosine decay), and set both arms' lr and
    the DDO arm's beta from it. At an optimum both of DDO's terms have zero mean gradient, so DDO only diffuses; under
    Adam its drift relative to MLE's scales like 1/beta (beta scales the restoring curvature by beta^2, the noise by
    beta, and Adam divides the noise out). ``ddo_control_failures`` states what "no worse" means.
    """

    seed: int = 0
    vocab_size: int = 24
    max_len: int = 16
    hidden_size: int = 32  # above the 26 ids: the family can represent a sharp P, the smoothed reference does not
    train_size: int = 5000
    ref_steps: int = 300
    label_smoothing: float = 0.1
    control_steps: int = 600  # the negative control's reference: MLE, no smoothing, decayed to its optimum
    control_batch_size: int | None = None  # the control reference's batch; None: ``batch_size``
    control_learning_rate: float | None = None  # the control reference's peak lr (cosine); None: ``learning_rate``
    control_arm_learning_rate: float | None = None  # both arms from the control (constant); None: ``learning_rate``
    control_train_size: int | None = None  # the control's own data (reference and arms); None: the shared data
    control_beta: float | None = None  # beta of the DDO arm from the control; None: ``beta``
    round_steps: int = 150
    num_rounds: int = 1
    alpha: float = 1.0
    beta: float = 0.5
    batch_size: int = 64  # real rows; DDO adds as many fakes
    learning_rate: float = 3e-3
    eval_sequences: int = 1000
    eval_samples: int = 2000
    extra_args: dict[str, Any] = field(default_factory=dict)


def _common_args(setup: DDOSetup, steps: int, **kwargs: Any) -> dict[str, Any]:
    """The lab's arguments for one DDO-study run; ``kwargs`` (e.g. the control's ``learning_rate``) win."""
    return _lab_args(
        max_steps=steps,
        max_length=setup.max_len + 1,
        seed=setup.seed,
        batch_size=setup.batch_size,
        learning_rate=kwargs.pop("learning_rate", setup.learning_rate),
        extra=setup.extra_args,
        **kwargs,
    )


class _EvalEvery(TrainerCallback):
    """Evaluates the model every ``every`` steps (the end of each DDO round, and the same steps for MLE)."""

    def __init__(self, every: int, evaluate: Callable[[Any], dict], out: dict[int, dict]) -> None:
        self.every, self.evaluate, self.out = every, evaluate, out

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.out[state.global_step] = self.evaluate(model)


def ddo_vs_mle(
    setup: DDOSetup,
    output_dir: str,
    control: bool = False,
    on_stage: Callable[[str], None] | None = None,
    main: bool = True,
) -> dict[str, Any]:
    """Reference, then DDO and continued MLE from it for ``num_rounds * round_steps`` steps each; same data order.

    Both arms are evaluated at the end of every round (so one run with 3 rounds gives rounds 1, 2 and 3, and MLE at
    the same step counts). With ``control=True`` the same two arms also start from the negative control, a reference
    trained by MLE without smoothing for ``control_steps`` with a cosine decay; with ``control_train_size`` on its own
    fresh data, which puts it near its within-family optimum (see ``DDOSetup``), and its arms then train on other fresh
    rows, one pass (no row the reference saw, none repeated: no finite sample to over-fit).
    ``main=False`` skips the label-smoothed reference and its arms (the control alone, for ``ddo_control_failures``).

    Returns ``{"metrics": {name: {...}}, "trainers": {name: trainer}, "task": task}`` with names ``"reference"``,
    ``"mle@<step>"``, ``"ddo@<step>"`` (and ``"control"``, ``"control-mle@<step>"``, ``"control-ddo@<step>"``).
    Metrics are ``bigram_metrics`` plus ``sample_diversity`` of the same samples.
    """
    task = BigramTask(vocab_size=setup.vocab_size, max_len=setup.max_len, seed=setup.seed, eos=False)
    tokenizer, dataset = task.tokenizer(), task.dataset(setup.train_size, seed=setup.seed + 100)
    held_out = setup.seed + 1000  # not the training data's seed

    def evaluate(model: Any) -> dict[str, float]:
        metrics = bigram_metrics(
            model, task, num_sequences=setup.eval_sequences, num_samples=setup.eval_samples, seed=held_out
        )
        with eval_mode(model):
            samples = sample_model(model, task, setup.eval_samples, held_out + 1, 1000)  # bigram_metrics' samples
        return metrics | sample_diversity(samples, task)

    def report(name: str) -> None:
        if on_stage:
            on_stage(name)

    steps = setup.num_rounds * setup.round_steps
    metrics, trainers = {}, {}
    starts = {}
    if main:
        smoothing = dict(label_smoothing_factor=setup.label_smoothing)
        starts[""] = ("reference", setup.ref_steps, smoothing, {}, dataset, dataset)
    if control:
        ref_args = dict(label_smoothing_factor=0.0, lr_scheduler_type="cosine")
        ref_args["per_device_train_batch_size"] = setup.control_batch_size or setup.batch_size
        ref_args["learning_rate"] = setup.control_learning_rate or setup.learning_rate
        arm_args = dict(learning_rate=setup.control_arm_learning_rate or setup.learning_rate)
        control_data = arm_data = dataset
        if setup.control_train_size:  # enough rows, none repeated: the reference fits P, not a finite sample
            control_data = task.dataset(setup.control_train_size, seed=setup.seed + 200)
            arm_data = task.dataset(steps * setup.batch_size, seed=setup.seed + 300)  # fresh rows for one pass
        starts["control-"] = ("control", setup.control_steps, ref_args, arm_args, control_data, arm_data)
    for prefix, (name, ref_steps, ref_args, arm_args, data, arm_data) in starts.items():
        ref_dir = os.path.join(output_dir, name)
        model = tiny_causal_lm(tokenizer, hidden_size=setup.hidden_size, seed=setup.seed)
        args = SFTConfig(ref_dir, **_common_args(setup, ref_steps, **ref_args))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*label_smoothing_factor.*", category=FutureWarning)
            reference = _fit(SFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer))
        reference.save_model(ref_dir)
        metrics[name] = evaluate(reference.model)
        report(name)
        for arm in ("mle", "ddo"):
            arm_dir, evals = os.path.join(output_dir, f"{prefix}{arm}"), {}
            callback = _EvalEvery(setup.round_steps, evaluate, evals)
            if arm == "mle":
                args = SFTConfig(arm_dir, **_common_args(setup, steps, **arm_args))
                trainer = SFTTrainer(ref_dir, args=args, train_dataset=arm_data, processing_class=tokenizer)
            else:
                beta = setup.control_beta if prefix and setup.control_beta is not None else setup.beta
                ddo = dict(alpha=setup.alpha, beta=beta, num_rounds=setup.num_rounds)
                args = DDOConfig(
                    arm_dir, **ddo, round_steps=setup.round_steps, **_common_args(setup, steps, **arm_args)
                )
                trainer = DDOTrainer(ref_dir, args=args, train_dataset=arm_data, processing_class=tokenizer)
            trainers[f"{prefix}{arm}"] = _fit(trainer, callback)
            for step, values in sorted(evals.items()):
                metrics[f"{prefix}{arm}@{step}"] = values
            report(f"{prefix}{arm}")
    return {"metrics": metrics, "trainers": trainers, "task": task}


# A reference at (near) P's within-family MLE optimum, and the arms' settings from it (``DDOSetup``'s ``control_*``):
# one pass over fresh rows (none repeated: no over-fitting to a finite sample), batch 256, cosine from 3e-3, held-out
# NLL 0.006-0.007 nats/token above P's entropy; both arms at a fine-tuning lr, DDO with beta 2 (see DDOSetup).
DDO_OPTIMAL_CONTROL = dict(
    control_steps=1000,
    control_batch_size=256,
    control_train_size=260_000,
    control_arm_learning_rate=1e-4,
    control_beta=2.0,
)


@dataclass(frozen=True)
class ControlMargins:
    """How much worse than the reference and than continued MLE (same steps, same data) DDO may end up at the optimum.

    Continued MLE is the yardstick because it drifts too: constant-lr Adam on fresh mini-batches diffuses around the
    optimum (+0.3 to +6.5 % JS in 150-450 steps at lr 1e-4). Relative margins for JS, NLL and the impossible mass
    (exact given the model; 15 % of the control's JS is 0.0003 nats, against the 0.02 DDO removes from the
    over-dispersed reference); absolute ones for the invalid rate (2,000 samples: a difference of two rates has a
    standard deviation of about 0.01) and the entropy. Worst cases measured with ``DDO_OPTIMAL_CONTROL`` (3 seeds,
    rounds 1-3): JS +6.7 % vs the reference and +3.0 % vs MLE, impossible mass +3.4 % vs MLE, invalid rate +0.008.
    """

    js_vs_ref: float = 0.15
    js_vs_mle: float = 0.10
    nll: float = 0.002
    zero_mass: float = 0.05
    invalid_rate: float = 0.03
    distinct_valid_bigrams: float = 0.05
    token_entropy: float = 0.05


def ddo_control_failures(
    metrics: dict[str, dict[str, float]], steps: Sequence[int], margins: ControlMargins = ControlMargins()
) -> list[str]:
    """Every way DDO from the control ends up worse than ``margins`` allow, at each of ``steps``; empty: it holds.

    ``metrics`` is ``ddo_vs_mle(..., control=True)["metrics"]``: ``"control"``, ``"control-mle@<step>"`` and
    ``"control-ddo@<step>"``. Higher is worse for JS, NLL, the impossible mass and the invalid rate; lower is worse
    for distinct valid bigrams and token entropy (collapse).
    """
    ref, failures = metrics["control"], []

    def check(name: str, value: float, limit: float, higher_is_worse: bool = True) -> None:
        if (value > limit) if higher_is_worse else (value < limit):
            failures.append(f"{name} = {value:.5g}, limit {limit:.5g}")

    for step in steps:
        ddo, mle = metrics[f"control-ddo@{step}"], metrics[f"control-mle@{step}"]
        for base_name, base in (("reference", ref), ("MLE", mle)):
            js_margin = margins.js_vs_ref if base is ref else margins.js_vs_mle
            check(f"step {step}: JS vs {base_name}", ddo["js"], base["js"] * (1 + js_margin))
            check(f"step {step}: NLL vs {base_name}", ddo["nll"], base["nll"] * (1 + margins.nll))
            check(
                f"step {step}: zero mass vs {base_name}", ddo["zero_mass"], base["zero_mass"] * (1 + margins.zero_mass)
            )
            check(
                f"step {step}: invalid rate vs {base_name}",
                ddo["invalid_rate"],
                base["invalid_rate"] + margins.invalid_rate,
            )
        check(
            f"step {step}: distinct valid bigrams",
            ddo["distinct_valid_bigrams"],
            ref["distinct_valid_bigrams"] * (1 - margins.distinct_valid_bigrams),
            higher_is_worse=False,
        )
        check(f"step {step}: token entropy", ddo["token_entropy"], ref["token_entropy"] - margins.token_entropy, False)
    return failures
