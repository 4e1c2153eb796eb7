"""The one metrics mechanism (``trainers.logged_metrics.MethodMetrics``): what a window holds, when it is emptied, and
that every trainer logs through it (no trainer keeps accumulators or a ``log`` of its own)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trl_likelihood.methods import METHODS
from trl_likelihood.trainers.logged_metrics import MethodMetrics


class _Parent:
    """What ``MethodMetrics`` needs of a TRL trainer: a metrics store that ``log`` averages and empties."""

    def __init__(self) -> None:
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(gather=lambda t: t, gather_for_metrics=lambda t: t)  # one process
        self.logged: list[dict] = []

    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        averaged = {k: sum(v) / len(v) for k, v in self._metrics[mode].items()}
        self.logged.append({**logs, **averaged})
        self._metrics[mode].clear()

    def evaluation_loop(self, *args, **kwargs):
        return "evaluated"

    def train(self, *args, **kwargs):
        return "trained"


class _Toy(MethodMetrics, _Parent):
    _metric_prefix = "toy"

    def window_metrics(self, mode, rows, means, totals):
        out = dict(means)
        if rows is not None:
            out["rows"] = len(rows)
            out["row_sum"] = rows.sum().item()
        if totals:
            out["share"] = totals["a"] / totals["b"]
        return out


def test_a_window_holds_means_rows_and_totals_until_its_log():
    toy = _Toy()
    toy.record_means("train", loss=torch.tensor(1.0))
    toy.record_means("train", loss=torch.tensor(3.0))
    toy.record_rows("train", torch.ones(2, 3))
    toy.record_rows("train", torch.ones(1, 4, 3))  # (examples, steps, k) flattened to (4, 3)
    toy.record_totals("train", a=1.0, b=4.0)
    toy.record_totals("train", a=1.0)
    toy.log({"loss": 0.5})
    assert toy.logged[-1] == {"loss": 0.5, "toy/loss": 2.0, "toy/rows": 6, "toy/row_sum": 18.0, "toy/share": 0.5}
    toy.log({"loss": 0.25})  # the next train-log interval starts empty
    assert toy.logged[-1] == {"loss": 0.25}


def test_evaluation_and_training_open_fresh_windows_and_modes_stay_apart():
    toy = _Toy()
    toy.record_means("eval", loss=torch.tensor(9.0))  # e.g. left by a predict(), which never logs
    toy._metrics["eval"]["entropy"].append(7.0)
    toy.record_means("train", loss=torch.tensor(1.0))
    assert toy.evaluation_loop() == "evaluated"
    toy.record_means("eval", loss=torch.tensor(2.0))
    toy.model.training = False
    toy.log({})
    assert toy.logged[-1] == {"toy/loss": 2.0}
    toy.model.training = True
    toy.log({})
    assert toy.logged[-1] == {"toy/loss": 1.0}  # an evaluation log did not cut the train window
    toy.record_means("train", loss=torch.tensor(5.0))
    assert toy.train() == "trained"
    toy.log({})
    assert toy.logged[-1] == {}


def test_a_plain_trainer_parent_gets_the_store_averaged_with_eval_prefix():
    class _PlainParent(_Parent):
        def log(self, logs, start_time=None):
            self.logged.append(dict(logs))  # transformers' Trainer.log knows nothing of the store

    class _PlainToy(MethodMetrics, _PlainParent):
        _metric_prefix = "toy"
        _parent_logs_metrics_store = False

    toy = _PlainToy()
    toy.model.training = False
    toy.record_means("eval", loss=torch.tensor(4.0))
    toy.log({"eval_loss": 1.0})
    assert toy.logged[-1] == {"eval_loss": 1.0, "eval_toy/loss": 4.0}
    assert not toy._metrics["eval"]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_trainer_logs_through_the_one_mechanism(name):
    trainer = METHODS[name].trainer_class
    assert issubclass(trainer, MethodMetrics) and trainer._metric_prefix
    own = [c for c in trainer.__mro__ if c.__module__.startswith("trl_likelihood") and c is not MethodMetrics]
    assert [c.__name__ for c in own if "log" in vars(c)] == []
    assert [c.__name__ for c in own if "evaluation_loop" in vars(c)] == []
