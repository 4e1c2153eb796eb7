"""The input features the shipped ``evaluate`` modules share, and their ``MetricInfo``: each module script then holds
only its description and the one function it computes."""

from __future__ import annotations

import datasets
import evaluate

_ROW = datasets.Sequence(datasets.Value("float64"))

#: Per context, the model's and the true next-token distributions (same vocabulary order).
DISTRIBUTIONS = datasets.Features({"predictions": _ROW, "references": _ROW})

#: Per response, a score per step and a 0/1 (or bool) label per step; responses may differ in length.
STEP_SCORES = [
    datasets.Features({"predictions": _ROW, "references": datasets.Sequence(datasets.Value(kind))})
    for kind in ("int64", "bool")
]

#: Per model sample, its true log-probability (``-inf`` when impossible).
SAMPLE_LOG_PROBS = datasets.Features({"log_probs": datasets.Value("float64")})

#: Per model sample, its true log-probability and its number of tokens.
SAMPLE_LOG_PROBS_AND_LENGTHS = datasets.Features(
    {"log_probs": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}
)

#: Per text, the generated string.
TEXTS = datasets.Features({"predictions": datasets.Value("string")})


def metric_info(
    description: str, inputs_description: str, features: datasets.Features | list, citation: str = ""
) -> evaluate.MetricInfo:
    """The ``MetricInfo`` a module's ``_info`` returns."""
    return evaluate.MetricInfo(
        description=description, citation=citation, inputs_description=inputs_description, features=features
    )
