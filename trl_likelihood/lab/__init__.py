"""Known-ground-truth synthetic tasks and exact metrics: where a method's claim is measured, not assumed.

Used by the efficacy tests and benchmarks. ``BigramTask`` is MixCE's sparse random bigram (ALGORITHMS.md 2(g)).
"""

from .bigram import BOS_ID, EOS_ID, PAD_ID, BigramTask
from .metrics import bigram_metrics, prefix_metrics, sample_model
from .models import BigramOracle, tiny_causal_lm

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "BigramOracle",
    "BigramTask",
    "bigram_metrics",
    "prefix_metrics",
    "sample_model",
    "tiny_causal_lm",
]
