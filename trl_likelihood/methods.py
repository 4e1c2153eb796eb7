"""The methods trl-likelihood ships, in one table: each one's ``trl-likelihood <name>`` subcommand, config and trainer,
launch script, card template, the ``trl`` command it replaces and its line of help.

The console entry (``entry``), the CLI (``cli``), the package exports, the launch scripts in ``trainers/`` and the
tests read it; a new method is one row here plus its module ``trl_likelihood/trainers/<module>.py``, its script
``trainers/<module>.py`` and its card ``hub_cards/<module>.md``. Nothing heavy is imported: ``trl-likelihood --help``
reads this table without torch or TRL; the classes load on first use.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

PROG = "trl-likelihood"

# The one recipe for several processes on a CPU-only machine, word for word in the README, in --help, in cli.py's
# docstring and in each trainers/<script>.py (tests/test_entry.py), and run as written by tests/test_distributed.py.
# --multi_gpu: without it accelerate starts a single process; --use_cpu goes to the script (accelerate's own --cpu
# also starts one process); the ranks then talk over gloo.
CPU_RECIPE = (
    "accelerate launch --multi_gpu --num_processes 2 --mixed_precision no trainers/{script}.py --config {script}.yaml "
    "--use_cpu"
)


def cpu_recipe(script: str = "mixce") -> str:
    """``CPU_RECIPE`` for ``trainers/<script>.py`` (``implicit_prm``, not ``implicit-prm``)."""
    return CPU_RECIPE.format(script=script)


@dataclass(frozen=True)
class Method:
    """One ``trl-likelihood <name>`` subcommand.

    The trainer accepts TRL's keywords ``model`` (a path or Hub id), ``args``, ``train_dataset``, ``eval_dataset``
    and ``peft_config``; quantization reaches it through ``args.model_init_kwargs``, which every TRL config has.
    """

    name: str  # the subcommand
    module: str  # trl_likelihood/trainers/<module>.py, trainers/<module>.py, hub_cards/<module>.md
    config: str
    trainer: str
    replaces: str  # the `trl` subcommand whose data and flags this method takes, shown in --help
    help: str

    @property
    def script(self) -> str:
        return f"trainers/{self.module}.py"

    @property
    def card_template(self) -> str:
        return f"{self.module}.md"

    @property
    def config_class(self) -> type:
        return getattr(importlib.import_module(f"trl_likelihood.trainers.{self.module}"), self.config)

    @property
    def trainer_class(self) -> type:
        return getattr(importlib.import_module(f"trl_likelihood.trainers.{self.module}"), self.trainer)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "mixce", "mixce", "MixCEConfig", "MixCETrainer", "sft",
            "MixCE: forward + self-reinforced reverse cross-entropy (--eta); language-modeling or prompt-completion "
            "data.",
        ),
        Method(
            "implicit-prm", "implicit_prm", "ImplicitPRMConfig", "ImplicitPRMTrainer", "kto",
            "Implicit PRM: outcome reward beta*log(pi/pi_ref) on correct/incorrect labels, step rewards for free "
            "(--beta, --loss_type ce|dpo); prompt+completion+label or prompt+chosen+rejected data.",
        ),
        Method(
            "ddo", "ddo", "DDOConfig", "DDOTrainer", "sft",
            "DDO: the likelihood ratio to a frozen reference as a GAN discriminator, real data vs reference samples, "
            "self-play rounds (--alpha, --beta, --num_rounds); language-modeling or prompt-completion data.",
        ),
        Method(
            "sequencematch", "sequencematch", "SequenceMatchConfig", "SequenceMatchTrainer", "sft",
            "SequenceMatch: a <bkspc> action, logits as soft Q-values, chi^2-mixture occupancy matching on data and "
            "on-policy rollouts (--noise_prob, --chi2_coef, --sm_weight); language-modeling or prompt-completion "
            "data.",
        ),
        Method(
            "stepwise-prm", "stepwise_prm", "StepwisePRMConfig", "StepwisePRMTrainer", "reward",
            "Stepwise (explicit) PRM: a token classifier predicting each step's label at the step's last token, as "
            "TRL's former PRMTrainer (--step_separator, --train_on_last_step_only); prompt+completions+labels "
            "stepwise data.",
        ),
    )
}  # fmt: skip


def method_of_script(path: str) -> str:
    """The method a launch script ``trainers/<module>.py`` runs."""
    module = os.path.splitext(os.path.basename(path))[0]
    return next(m.name for m in METHODS.values() if m.module == module)
