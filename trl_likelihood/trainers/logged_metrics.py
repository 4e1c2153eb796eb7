"""One way for every trainer here to log its method's metrics, whatever the engine and however many processes.

Inside ``compute_loss`` a method records tensors on the device; they are gathered across processes and read back to
the host once per ``log``, where the method turns its window into numbers (``window_metrics``). A window is one
train-log interval (emptied by the ``log`` that reports it), one evaluation or one prediction (each emptied when it
starts, so a ``predict()``, which never logs, cannot leak its rows into the next evaluation).

Three kinds of record, by what the number needs:

- ``record_rows``: per-example rows (a reward and its label, a log-ratio and a length), gathered at once with
  ``gather_for_metrics``, which drops the examples accelerate repeats to even out the last evaluation batch. For
  metrics that need every example: AUROC, accuracies, exact corpus-level means.
- ``record_means``: scalars of one micro-batch (loss terms), averaged over the window's micro-batches and processes;
  kept on the device and gathered in one collective at ``log``.
- ``record_totals``: host numbers summed over the window on this process (seconds of wall clock).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _compat


@dataclass
class MetricWindow:
    """What a method recorded since its window opened; ``rows`` and ``means`` cover every process."""

    rows: list[torch.Tensor] = field(default_factory=list)  # (n, k) pieces, on the device until read
    means: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class MethodMetrics:
    """Mix in before the TRL trainer. ``_metric_prefix`` names the metrics ``<prefix>/<name>``; a method reads its
    window in ``window_metrics``. Trainers whose parent does not average TRL's metrics store (a plain ``Trainer``) set
    ``_parent_logs_metrics_store = False``."""

    _metric_prefix: str = ""
    _parent_logs_metrics_store: bool = True

    @property
    def metric_mode(self) -> str:
        """``"train"`` or ``"eval"``: which window a record goes to (TRL's trainers read ``model.training`` so too)."""
        return "train" if self.model.training else "eval"

    def _window(self, mode: str) -> MetricWindow:
        return self.__dict__.setdefault("_metric_windows", {}).setdefault(mode, MetricWindow())

    def record_rows(self, mode: str, rows: torch.Tensor) -> None:
        """Per-example rows ``(examples, ..., k)`` of this micro-batch; ``window_metrics`` gets them as ``(n, k)``."""
        gathered = self.accelerator.gather_for_metrics(rows.detach())
        self._window(mode).rows.append(gathered.reshape(-1, rows.shape[-1]))

    def record_means(self, mode: str, **values: torch.Tensor) -> None:
        """Scalars of this micro-batch. Every process records the same names the same number of times."""
        means = self._window(mode).means
        for name, value in values.items():
            means[name].append(value.detach().float().reshape(()))

    def record_totals(self, mode: str, **values: float) -> None:
        """Host numbers summed over the window on this process."""
        totals = self._window(mode).totals
        for name, value in values.items():
            totals[name] += value

    def window_metrics(self, mode: str, rows: torch.Tensor | None, means: dict[str, float], totals: dict[str, float]):
        """The method's metrics for one window, names without the prefix: by default the means.

        ``rows``: every recorded row, ``(n, k)`` on the CPU (``None`` when none was recorded).
        """
        return means

    def reset_metrics(self, mode: str) -> None:
        """Open a fresh window for ``mode`` (TRL's own store included); methods extend it with their own state."""
        self.__dict__.setdefault("_metric_windows", {}).pop(mode, None)
        _compat.metrics_store(self, mode).clear()

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self.reset_metrics("eval")  # evaluate() and predict() both run it
        return super().evaluation_loop(*args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.reset_metrics("train")
        return super().train(*args, **kwargs)

    def _read_window(self, mode: str) -> dict[str, float]:
        """Close ``mode``'s window: one gather of the means, one read of everything to the host."""
        window = self.__dict__.setdefault("_metric_windows", {}).pop(mode, None)
        if window is None:
            return {}
        means = {}
        if window.means:
            stacked = [torch.stack(values) for values in window.means.values()]
            gathered = self.accelerator.gather(torch.cat(stacked)[None])  # (processes, every value)
            parts = gathered.split([len(values) for values in stacked], dim=1)
            means = dict(zip(window.means, torch.stack([part.mean() for part in parts]).tolist()))
        rows = torch.cat(window.rows).cpu() if window.rows else None
        if rows is None and not means and not window.totals:
            return {}
        return self.window_metrics(mode, rows, means, dict(window.totals))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = self.metric_mode
        store = _compat.metrics_store(self, mode)
        for name, value in self._read_window(mode).items():
            store[f"{self._metric_prefix}/{name}"] = [value]
        if not self._parent_logs_metrics_store:  # what TRL's trainers do in their own `log`
            prefix = "eval_" if mode == "eval" else ""
            logs = {**logs, **{f"{prefix}{key}": sum(vals) / len(vals) for key, vals in store.items() if vals}}
            store.clear()
        super().log(logs, start_time)
