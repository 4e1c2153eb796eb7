"""First-error localisation: does the lowest-scored step of a response with one error point at it?"""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import STEP_SCORES, metric_info
from trl_likelihood.metrics import first_error_localisation

_DESCRIPTION = """Over responses with exactly one wrong step, the share whose lowest-scored step is the wrong one;
ties split the credit (a constant scorer gets 1/K on K-step responses). Responses with no error or several are
skipped."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per response, the score of each step.
    references: per response, 1 for each locally correct step and 0 for each wrong one.
Returns:
    localisation: in [0, 1]; nan when no response has exactly one wrong step.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FirstErrorLocalisation(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, STEP_SCORES)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"localisation": first_error_localisation(predictions, references)}
