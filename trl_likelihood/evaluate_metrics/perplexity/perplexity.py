"""Perplexity of texts under a scorer causal LM that the user gives (an object or a local path), no download."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import TEXTS, metric_info
from trl_likelihood.metrics import perplexity

_DESCRIPTION = """Perplexity of each text under ``model``: exp of the mean token NLL, the first token being context
only. Unlike the Hub's ``perplexity`` metric, the scorer is a model object or a local directory (a PEFT adapter
directory loads with its base), so it runs offline."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the texts to score.
    model: a causal LM object, or a local path to one (or to a PEFT adapter).
    tokenizer: the model's tokenizer; default: loaded from ``model``'s path.
    batch_size: texts per forward (default 8).
Returns:
    perplexities (per text), mean_perplexity (their mean) and perplexity (exp of the token-mean NLL of all texts).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, TEXTS)

    def _compute(self, predictions: list, model=None, tokenizer=None, batch_size: int = 8) -> dict:
        if model is None:
            raise ValueError("Pass `model=`: a causal LM object or a local path to one.")
        return perplexity(model, tokenizer, predictions, batch_size=batch_size)
