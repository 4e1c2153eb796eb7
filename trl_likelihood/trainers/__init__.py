"""One module per method: a Config dataclass and a Trainer subclass of the TRL trainer it replaces."""

from .mixce import MixCEConfig, MixCETrainer

__all__ = ["MixCEConfig", "MixCETrainer"]
