"""Model probability on next tokens the true distribution rules out."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import DISTRIBUTIONS, metric_info
from trl_likelihood.metrics import impossible_mass

_DESCRIPTION = """Mean over contexts of the model's probability on tokens whose true probability is 0: the mass a
model spreads where the data never goes (MixCE's target, ALGORITHMS.md 2(g))."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the model's next-token distributions, one list of probabilities per context.
    references: the true next-token distributions of the same contexts, same vocabulary order.
Returns:
    zero_mass: the mean model mass on impossible tokens, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ImpossibleMass(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, DISTRIBUTIONS)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"zero_mass": impossible_mass(predictions, references)}
