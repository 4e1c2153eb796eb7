"""The lab's exact metrics and generation-quality metrics as ``evaluate`` modules, shipped in the package.

Each module is ``<name>/<name>.py`` here, an ``evaluate.Metric`` whose ``_compute`` calls a pure function of
``trl_likelihood.metrics``; ``load(name)`` is ``evaluate.load(<that path>)``, so nothing is downloaded::

    from trl_likelihood import evaluate_metrics

    js = evaluate_metrics.load("per_context_js")
    js.compute(predictions=model_next_token_probs, references=true_next_token_probs)  # {"js": ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS = (
    "per_context_js",
    "impossible_mass",
    "invalid_sample_rate",
    "reverse_cross_entropy",
    "step_auroc",
    "first_error_localisation",
    "processbench",
    "generation_quality",
    "perplexity",
)


def module_path(name: str) -> str:
    """Path of the metric script ``name`` inside the installed package (what ``evaluate.load`` takes)."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the package ships {list(METRICS)}.")
    return str(Path(__file__).resolve().parent / name / f"{name}.py")


def load(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` of the shipped module ``name``, offline; ``kwargs`` go to ``evaluate.load``."""
    import evaluate

    return evaluate.load(module_path(name), **kwargs)
