"""Per-context Jensen-Shannon divergence between a model's and the true next-token distributions (nats)."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import DISTRIBUTIONS, metric_info
from trl_likelihood.metrics import per_context_js

_DESCRIPTION = """Mean over contexts of JS(P(.|c), Q(.|c)) in nats (0 to log 2), where P is the task's true next-token
distribution and Q the model's. One row per context; pass one row per visited prefix to weight contexts as P visits
them (``trl_likelihood.lab.prefix_metrics`` does)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the model's next-token distributions, one list of probabilities per context (vocab entries).
    references: the true next-token distributions of the same contexts, same vocabulary order.
Returns:
    js: the mean JS divergence, nats.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerContextJS(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, DISTRIBUTIONS)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"js": per_context_js(predictions, references)}
