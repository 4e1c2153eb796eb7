"""trl-likelihood: beyond-maximum-likelihood objectives as drop-in TRL trainers."""

from .losses import mixce_loss, mixce_token_loss
from .trainers import MixCEConfig, MixCETrainer

__version__ = "0.1.0"

__all__ = ["MixCEConfig", "MixCETrainer", "mixce_loss", "mixce_token_loss", "__version__"]
