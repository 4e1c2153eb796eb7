"""AUROC of per-step scores (e.g. implicit process rewards) for correct vs wrong steps."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import STEP_SCORES, metric_info
from trl_likelihood.metrics import step_auroc

_DESCRIPTION = """P(score of a correct step > score of a wrong step), ties counted 1/2, pooled over every step of
every response (responses may have different numbers of steps). 0.5 is chance; a constant scorer gets exactly 0.5."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per response, the score of each step (e.g. ``ImplicitPRM(...).score(...)[i].step_rewards``).
    references: per response, 1 for each locally correct step and 0 for each wrong one.
Returns:
    step_auroc: in [0, 1]; nan when every step is correct or every step is wrong.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StepAUROC(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, STEP_SCORES)

    def _compute(self, predictions: list, references: list) -> dict[str, float]:
        return {"step_auroc": step_auroc(predictions, references)}
