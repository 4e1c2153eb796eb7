"""trl-likelihood: beyond-maximum-likelihood objectives as drop-in TRL trainers."""

from .losses import ddo_loss, implicit_prm_dpo_loss, implicit_prm_loss, mixce_loss, mixce_token_loss
from .scoring import ImplicitPRM, StepScores
from .trainers import DDOConfig, DDOTrainer, ImplicitPRMConfig, ImplicitPRMTrainer, MixCEConfig, MixCETrainer

__version__ = "0.1.0"

__all__ = [
    "DDOConfig",
    "DDOTrainer",
    "ddo_loss",
    "ImplicitPRM",
    "StepScores",
    "ImplicitPRMConfig",
    "ImplicitPRMTrainer",
    "MixCEConfig",
    "MixCETrainer",
    "__version__",
    "implicit_prm_dpo_loss",
    "implicit_prm_loss",
    "mixce_loss",
    "mixce_token_loss",
]
