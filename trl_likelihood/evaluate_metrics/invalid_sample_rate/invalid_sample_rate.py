"""Share of model samples that are impossible under the task's true distribution."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import SAMPLE_LOG_PROBS, metric_info
from trl_likelihood.metrics import invalid_rate

_DESCRIPTION = """Share of samples with true probability 0 (a forbidden transition, or no end by the maximum
length). The input is each sample's true log-probability, e.g. ``log_p, _ = task.log_prob(samples)`` for a
``BigramTask``; ``-inf`` marks an impossible sample."""

_KWARGS_DESCRIPTION = """
Args:
    log_probs: the true log P of each model sample, -inf when impossible.
Returns:
    invalid_rate: the share of impossible samples, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class InvalidSampleRate(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, SAMPLE_LOG_PROBS)

    def _compute(self, log_probs: list) -> dict[str, float]:
        return {"invalid_rate": invalid_rate(log_probs)}
