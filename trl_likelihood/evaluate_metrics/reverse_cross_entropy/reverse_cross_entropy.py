"""Reverse cross-entropy: -log P per token of the model's samples under the task's true distribution."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import SAMPLE_LOG_PROBS_AND_LENGTHS, metric_info
from trl_likelihood.metrics import reverse_cross_entropy

_DESCRIPTION = """-log P per token (nats) over the model's valid samples, P the task's true distribution: how
plausible what the model writes is. Inputs are ``log_p, num_tokens = task.log_prob(samples)`` for a ``BigramTask``;
impossible samples (log P = -inf) are left out (the invalid-sample rate counts them); nan if none is valid."""

_KWARGS_DESCRIPTION = """
Args:
    log_probs: the true log P of each model sample, -inf when impossible.
    num_tokens: the number of tokens each log P sums over.
Returns:
    reverse_nll: nats per token over the valid samples.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReverseCrossEntropy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, SAMPLE_LOG_PROBS_AND_LENGTHS)

    def _compute(self, log_probs: list, num_tokens: list) -> dict[str, float]:
        return {"reverse_nll": reverse_cross_entropy(log_probs, num_tokens)}
