"""ProcessBench-style first-error identification: the first step scored below a threshold is the first wrong one."""

import evaluate

from trl_likelihood.evaluate_metrics.module_info import STEP_SCORES, metric_info
from trl_likelihood.prm_evaluation import best_threshold, first_error_scores

_DESCRIPTION = """From step scores and a threshold, the predicted first wrong step of each response (or none: every
step scored at or above the threshold), compared with the first step labelled wrong (ProcessBench, Zheng et al.
2024). Reports the accuracy on erroneous responses (first error found exactly), on correct ones (called correct) and
their harmonic mean, F1. Pick the threshold on a dev split (``trl_likelihood.prm_evaluation.best_threshold``); without
one, the best threshold on these very responses is used and reported (an optimistic, in-sample figure)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per response, the score of each step.
    references: per response, 1 for each correct step and 0 for each wrong one.
    threshold: a step scored below it is wrong; default: the best on these responses.
Returns:
    error_accuracy, correct_accuracy, f1, num_erroneous, num_correct, threshold.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Processbench(evaluate.Metric):  # evaluate names a module after its class (snake case)
    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, STEP_SCORES)

    def _compute(self, predictions: list, references: list, threshold: float | None = None) -> dict[str, float]:
        if threshold is None:
            threshold = best_threshold(predictions, references)
        return first_error_scores(predictions, references, threshold)
