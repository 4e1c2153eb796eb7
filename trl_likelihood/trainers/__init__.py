"""One module per method: a Config dataclass and a Trainer subclass of the TRL trainer it replaces."""

from .ddo import DDOConfig, DDOTrainer
from .implicit_prm import ImplicitPRMConfig, ImplicitPRMTrainer
from .mixce import MixCEConfig, MixCETrainer
from .sequencematch import SequenceMatchConfig, SequenceMatchTrainer
from .stepwise_prm import StepwisePRMConfig, StepwisePRMTrainer

__all__ = [
    "DDOConfig",
    "DDOTrainer",
    "ImplicitPRMConfig",
    "ImplicitPRMTrainer",
    "MixCEConfig",
    "MixCETrainer",
    "SequenceMatchConfig",
    "SequenceMatchTrainer",
    "StepwisePRMConfig",
    "StepwisePRMTrainer",
]
