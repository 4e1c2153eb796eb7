"""trl-likelihood: beyond-maximum-likelihood objectives as drop-in TRL trainers.

Exports load on first use, so ``trl-likelihood --help`` answers without importing torch and TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .methods import METHODS

__version__ = "0.1.0"

_EXPORTS = {
    **{name: ".trainers" for method in METHODS.values() for name in (method.config, method.trainer)},
    "ImplicitPRM": ".scoring",
    "LikelihoodDiagnosticsCallback": ".diagnostics",
    "likelihood_ratio_score": ".scoring",
    "BackspaceSamples": ".generation",
    "StepScores": ".scoring",
    "StepwisePRM": ".stepwise_prm",
    "load_prm": ".prm_scorer",
    "ddo_loss": ".losses",
    "implicit_prm_dpo_loss": ".losses",
    "implicit_prm_loss": ".losses",
    "mixce_loss": ".losses",
    "mixce_token_loss": ".losses",
    "sequencematch_loss": ".losses",
    "stepwise_prm_loss": ".losses",
    "sample_with_backspace": ".generation",
    "apply_backspaces": ".backspace",
}

__all__ = [
    "BackspaceSamples",
    "DDOConfig",
    "DDOTrainer",
    "ImplicitPRM",
    "ImplicitPRMConfig",
    "ImplicitPRMTrainer",
    "LikelihoodDiagnosticsCallback",
    "MixCEConfig",
    "MixCETrainer",
    "SequenceMatchConfig",
    "SequenceMatchTrainer",
    "StepScores",
    "StepwisePRM",
    "StepwisePRMConfig",
    "StepwisePRMTrainer",
    "__version__",
    "ddo_loss",
    "implicit_prm_dpo_loss",
    "implicit_prm_loss",
    "likelihood_ratio_score",
    "load_prm",
    "mixce_loss",
    "mixce_token_loss",
    "sample_with_backspace",
    "apply_backspaces",
    "sequencematch_loss",
    "stepwise_prm_loss",
]

if TYPE_CHECKING:
    from .backspace import apply_backspaces
    from .diagnostics import LikelihoodDiagnosticsCallback
    from .generation import BackspaceSamples, sample_with_backspace
    from .losses import (
        ddo_loss,
        implicit_prm_dpo_loss,
        implicit_prm_loss,
        mixce_loss,
        mixce_token_loss,
        sequencematch_loss,
        stepwise_prm_loss,
    )
    from .prm_scorer import load_prm
    from .scoring import ImplicitPRM, StepScores, likelihood_ratio_score
    from .stepwise_prm import StepwisePRM
    from .trainers import (
        DDOConfig,
        DDOTrainer,
        ImplicitPRMConfig,
        ImplicitPRMTrainer,
        MixCEConfig,
        MixCETrainer,
        SequenceMatchConfig,
        SequenceMatchTrainer,
        StepwisePRMConfig,
        StepwisePRMTrainer,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
