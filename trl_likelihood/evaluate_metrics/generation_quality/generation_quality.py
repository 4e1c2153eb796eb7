"""Generation quality of any text, no download: distinct-n, repetition rate and mean length."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import TEXTS, metric_info
from trl_likelihood.metrics import generation_quality

_CITATION = """Li et al., "A Diversity-Promoting Objective Function for Neural Conversation Models", NAACL 2016
(distinct-n). Welleck et al., "Neural Text Generation with Unlikelihood Training", ICLR 2020 (seq-rep-n)."""

_DESCRIPTION = """distinct-n: distinct n-grams over all n-grams of all texts (corpus level). repetition_rate:
mean over texts of 1 - distinct n-grams / n-grams within the text (seq-rep-n; texts shorter than n are skipped).
mean_length: mean tokens per text. Tokens are whitespace words unless a tokenizer is given."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the generated texts.
    tokenizer: optional; a callable ``str -> list of tokens`` or a Hugging Face tokenizer (its ``tokenize``).
    ns: the n of each distinct-n reported (default ``(1, 2)``).
    repetition_n: the n of the repetition rate (default 4, as seq-rep-4).
Returns:
    distinct_{n} for each n, repetition_rate and mean_length (nan where a text set has no n-gram).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenerationQuality(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, TEXTS, citation=_CITATION)

    def _compute(self, predictions: list, tokenizer=None, ns=(1, 2), repetition_n: int = 4) -> dict[str, float]:
        return generation_quality(predictions, tokenizer, ns, repetition_n)
