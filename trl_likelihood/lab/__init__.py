"""Known-ground-truth synthetic tasks and exact metrics: where a method's claim is measured, not assumed.

Used by the efficacy tests, the benchmarks and the demo. ``BigramTask`` is MixCE's sparse random bigram
(ALGORITHMS.md 2(g)); ``ModArithTask`` is the implicit PRM's chained modular addition with systematic bug cells (4(g));
``AdditionTask`` is SequenceMatch's digit addition with corrupted answer starts to recover from (3(g)).
"""

from .addition import CORRUPTIONS, AdditionOracle, AdditionTask, addition_metrics, answer_nll
from .bigram import BOS_ID, EOS_ID, PAD_ID, BigramTask
from .metrics import bigram_metrics, prefix_metrics, sample_diversity, sample_model
from .modarith import ModArithTask, Rollouts, load_reference, train_reference
from .models import BigramOracle, tiny_causal_lm
from .prm_metrics import LogLikelihoodScorer, OracleScorer, RandomScorer, run_prm_efficacy, step_metrics

__all__ = [
    "CORRUPTIONS",
    "AdditionOracle",
    "AdditionTask",
    "addition_metrics",
    "answer_nll",
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "BigramOracle",
    "BigramTask",
    "LogLikelihoodScorer",
    "ModArithTask",
    "OracleScorer",
    "RandomScorer",
    "Rollouts",
    "load_reference",
    "run_prm_efficacy",
    "step_metrics",
    "train_reference",
    "bigram_metrics",
    "prefix_metrics",
    "sample_diversity",
    "sample_model",
    "tiny_causal_lm",
]
