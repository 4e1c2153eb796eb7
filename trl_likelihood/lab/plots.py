"""The lab experiments' plots, shared by ``benchmarks/efficacy.py`` (mean ± std over seeds) and ``trl-likelihood demo``
(one seed, no error bars).

Every function takes a list of per-seed results in the form the experiment returns and writes one small PNG (Agg
backend, no display needed); the mean over seeds is drawn with its standard deviation as error bars.

- ``plot_mixce``: mass on impossible tokens and per-context JS against eta, as the change vs MLE (``eta = 1``)
  within each seed (``mixce_vs_mle``).
- ``plot_implicit_prm``: step AUROC per scorer, and best-of-N accuracy against N with the selection baselines
  (``implicit_prm_vs_controls``).
- ``plot_ddo``: invalid-sample rate and per-context JS at the end of each round, DDO and MLE (``ddo_vs_mle``).
- ``plot_sequencematch``: clean accuracy and recovery from each corrupted answer start, MLE vs BC vs SequenceMatch
  (``sequencematch_vs_bc``).
- ``plot_prm_comparison``: implicit vs explicit PRMs, each metric against the label budget, with the controls
  (``prm_comparison.compare_prms``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Run = Mapping[Any, Mapping[str, float]]  # one seed: arm -> metric -> value
DPI = 90  # small files: they are committed under benchmarks/results/


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on CI or a server
    import matplotlib.pyplot as plt

    return plt


def mean_std(runs: Sequence[Run], arm: Any, metric: str) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one seed)."""
    values = np.array([run[arm][metric] for run in runs], dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _series(runs: Sequence[Run], points: Sequence[tuple[Any, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard deviations of ``(arm, metric)`` points, as two arrays."""
    stats = np.array([mean_std(runs, arm, metric) for arm, metric in points])
    return stats[:, 0], stats[:, 1]


def _save(fig: Any, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _title(runs: Sequence[Run]) -> str:
    return f"mean ± std over {len(runs)} seeds" if len(runs) > 1 else "one seed"


def paired_change(runs: Sequence[Run], arm: Any, control: Any, metric: str) -> tuple[float, float]:
    """Mean and std over seeds of the % change of ``arm`` vs ``control`` within each seed (the task varies by seed,
    so the spread of absolute values hides an effect that every seed shows)."""
    values = np.array([100.0 * (run[arm][metric] / run[control][metric] - 1.0) for run in runs])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def plot_mixce(runs: Sequence[Mapping[float, Mapping[str, float]]], path: str) -> str:
    """Mass on impossible tokens and per-context JS against eta, as the % change vs MLE (``eta = 1``) within each
    seed; runs map eta (float) -> ``bigram_metrics``."""
    plt = _pyplot()
    etas = sorted(key for key in runs[0] if isinstance(key, float))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (metric, label) in zip(axes, [("zero_mass", "mass on impossible tokens"), ("js", "per-context JS")]):
        stats = np.array([paired_change(runs, eta, 1.0, metric) for eta in etas])
        ax.errorbar(etas, stats[:, 0], yerr=stats[:, 1], marker="o", capsize=3, color="tab:blue", label="MixCE")
        ax.axhline(0.0, color="gray", linestyle="--", linewidth=1, label="MLE (eta = 1)")
        ax.set_title(f"{label} (lower is better)", fontsize=9)
        ax.set_xlabel("eta (weight of the forward/MLE term)")
        ax.set_ylabel("% change vs MLE, same seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MixCE vs MLE, sparse bigram, same steps from one warm start ({_title(runs)})", fontsize=10)
    return _save(fig, path)


def _best_of_n_sizes(run: Run, arm: str) -> list[int]:
    return sorted(int(m.group(1)) for key in run[arm] if (m := re.fullmatch(r"bon(\d+)_min", key)))


def plot_implicit_prm(runs: Sequence[Mapping[str, Mapping[str, float]]], path: str) -> str:
    """Step AUROC per scorer, and best-of-N accuracy against N; runs hold ``implicit_prm_vs_controls``'s dicts.

    Every arm whose key starts with ``implicit_prm`` is a PRM (e.g. ``implicit_prm_ce``); the controls are
    ``log_pi_ref`` and ``random``, the selection baselines come from ``baselines``. The PRM's outcome-only selection
    is the sum of its step rewards (its outcome reward), next to majority vote over final answers.
    """
    plt = _pyplot()
    prms = sorted(key for key in runs[0] if str(key).startswith("implicit_prm"))
    names = {
        key: "implicit PRM" + (f" ({key[len('implicit_prm_') :]})" if key != "implicit_prm" else "") for key in prms
    }
    names |= {"log_pi_ref": "log pi_ref (control)", "random": "random scorer"}
    scorers = [*prms, "log_pi_ref", "random"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    metrics = [("bug_auroc", "errors pi_ref prefers"), ("step_auroc", "all steps")]
    width = 0.8 / len(scorers)
    for i, scorer in enumerate(scorers):
        mean, std = _series(runs, [(scorer, metric) for metric, _ in metrics])
        bars = left.bar(np.arange(len(metrics)) + (i - (len(scorers) - 1) / 2) * width, mean, width, yerr=std,
                        capsize=3, label=names[scorer])  # fmt: skip
        left.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)  # a bar at 0 (the control on bug cells) shows too
    left.axhline(0.5, color="gray", linestyle=":", linewidth=1)
    left.set_xticks(np.arange(len(metrics)), [label for _, label in metrics])
    left.set_ylabel("step AUROC (chance 0.5)")
    left.set_ylim(0, 1.35)
    left.legend(fontsize=7, loc="upper center", ncol=2)
    left.set_title("Step-level credit", fontsize=9)
    sizes = _best_of_n_sizes(runs[0], prms[0])
    curves = [(prms[0], "min", names[prms[0]] + ", min step reward", "tab:blue", "-"),
              (prms[0], "sum", names[prms[0]] + ", outcome reward", "tab:cyan", "-"),
              ("log_pi_ref", "min", "log pi_ref, min step (control)", "tab:orange", "-"),
              ("baselines", "majority", "majority vote (outcome only)", "tab:green", "--"),
              ("baselines", "random", "random pick", "gray", "--"),
              ("baselines", "oracle", "oracle (any correct)", "black", ":")]  # fmt: skip
    for arm, kind, label, color, style in curves:
        mean, std = _series(runs, [(arm, f"bon{n}_{kind}") for n in sizes])
        right.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, color=color, linestyle=style, label=label)
    right.set_xscale("log", base=2)
    right.set_xticks(sizes, [str(n) for n in sizes])
    right.set_xlabel("N (candidates sampled from pi_ref)")
    right.set_ylabel("best-of-N accuracy")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    right.set_title("Best-of-N selection", fontsize=9)
    fig.suptitle(f"Implicit PRM from outcome labels, modular addition with bug cells ({_title(runs)})", fontsize=10)
    return _save(fig, path)


def ddo_steps(run: Mapping[str, Any], prefix: str = "") -> list[int]:
    """The steps at which ``ddo_vs_mle`` read both arms (the end of each round), in order."""
    return sorted(int(key.split("@")[1]) for key in run if key.startswith(f"{prefix}ddo@"))


def plot_ddo(runs: Sequence[Mapping[str, Mapping[str, float]]], path: str) -> str:
    """Invalid-sample rate and per-context JS per round, DDO and continued MLE from the same reference (round 0)."""
    plt = _pyplot()
    steps = ddo_steps(runs[0])
    rounds = list(range(len(steps) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (metric, label) in zip(axes, [("invalid_rate", "invalid-sample rate"), ("js", "per-context JS")]):
        for arm, color in (("ddo", "tab:red"), ("mle", "gray")):
            mean, std = _series(runs, [(key, metric) for key in ["reference", *[f"{arm}@{s}" for s in steps]]])
            name = "DDO" if arm == "ddo" else "MLE, same steps (control)"
            ax.errorbar(rounds, mean, yerr=std, marker="o", capsize=3, color=color, label=name)
        ax.set_xticks(rounds, ["ref"] + [f"{r}\n({s} steps)" for r, s in zip(rounds[1:], steps)])
        ax.set_xlabel("DDO round")
        ax.set_title(f"{label} (lower is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"DDO vs MLE from an over-dispersed reference, sparse bigram ({_title(runs)})", fontsize=10)
    return _save(fig, path)


SM_BARS = (
    ("accuracy", "clean"),
    ("recovery_first", "wrong 1st\ndigit"),
    ("recovery_later", "wrong 2nd\ndigit"),
    ("recovery_two", "two wrong\ndigits"),
    ("recovery_buried", "wrong 1st,\nright 2nd"),
)


def plot_sequencematch(runs: Sequence[Mapping[str, Mapping[str, float]]], path: str) -> str:
    """Clean accuracy and recovery accuracy per corruption of the answer start, one bar per arm."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(SM_BARS))
    arms = (
        ("MLE", "gray", "MLE (control)"),
        ("BC", "tab:blue", "BC (MLE + <bkspc> data)"),
        ("SM", "tab:red", "SequenceMatch"),
    )
    for i, (arm, color, label) in enumerate(arms):
        mean, std = _series(runs, [(arm, key) for key, _ in SM_BARS])
        ax.bar(x + (i - 1) * 0.27, mean, 0.27, yerr=std, capsize=2, color=color, label=label)
    ax.set_xticks(x, [label for _, label in SM_BARS], fontsize=8)
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1.05)
    ax.axvline(0.5, color="black", lw=0.5)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Recovery from a corrupted answer start, 2-digit addition ({_title(runs)})", fontsize=10)
    return _save(fig, path)


def plot_sequencematch_noise(runs_by_noise: Mapping[float, Sequence[Run]], path: str) -> str:
    """Recovery (wrong 2nd digit; two wrong digits) and clean accuracy against the augmentation's noise level p."""
    plt = _pyplot()
    noise = sorted(runs_by_noise)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    panels = (("recovery_later", "recovery, wrong 2nd digit"), ("recovery_two", "recovery, two wrong digits"),
              ("accuracy", "clean accuracy"))  # fmt: skip
    for ax, (metric, label) in zip(axes, panels):
        for arm, color, name in (("MLE", "gray", "MLE"), ("BC", "tab:blue", "BC"), ("SM", "tab:red", "SequenceMatch")):
            stats = np.array([mean_std(runs_by_noise[p], arm, metric) for p in noise])
            ax.errorbar(noise, stats[:, 0], yerr=stats[:, 1], marker="o", capsize=3, color=color, label=name)
        ax.set_xlabel("noise level p")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    seeds = len(next(iter(runs_by_noise.values())))
    fig.suptitle(f"Recovery vs noise level, 2-digit addition ({_title([{}] * seeds)})", fontsize=10)
    return _save(fig, path)


PRM_ARMS = {
    "implicit_ce": ("implicit PRM, CE (outcome labels)", "tab:blue", "-"),
    "implicit_dpo": ("implicit PRM, DPO (outcome labels)", "tab:cyan", "-"),
    "explicit_exact": ("explicit PRM, exact step labels", "tab:red", "-"),
    "explicit_shepherd": ("explicit PRM, Math-Shepherd labels", "tab:purple", "-"),
}
PRM_PANELS = (
    ("bug_auroc", "step AUROC in bug cells"),
    ("step_auroc", "step AUROC, pooled"),
    ("first_error_f1", "first-error F1 (ProcessBench)"),
    ("bon4_min", "best-of-4 accuracy"),
    ("bon16_min", "best-of-16 accuracy"),
)


def budgets_of(run: Mapping[str, Any], arm: str) -> list[int]:
    """The label budgets at which ``prm_comparison.compare_prms`` ran ``arm`` (keys ``"<arm>@<budget>"``)."""
    return sorted(int(key.split("@")[1]) for key in run if key.startswith(f"{arm}@"))


def plot_prm_comparison(runs: Sequence[Mapping[str, Mapping[str, float]]], path: str) -> str:
    """Each metric against the label budget, one line per PRM arm, the controls (log pi_ref, random scorer) and the
    selection baselines (majority vote, oracle) as flat lines: they need no labels. Runs are ``compare_prms``'s."""
    plt = _pyplot()
    arms = [arm for arm in PRM_ARMS if budgets_of(runs[0], arm)]
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, (metric, label) in zip(axes.flat, PRM_PANELS):
        for arm in arms:
            budgets = budgets_of(runs[0], arm)
            mean, std = _series(runs, [(f"{arm}@{b}", metric) for b in budgets])
            name, color, style = PRM_ARMS[arm]
            ax.errorbar(budgets, mean, yerr=std, marker="o", capsize=3, color=color, linestyle=style, label=name)
        flat = [("log_pi_ref", metric, "log pi_ref (control)", "tab:orange", "--"),
                ("random", metric, "random scorer", "gray", ":")]  # fmt: skip
        if metric.startswith("bon"):
            size = metric[3 : metric.index("_")]
            flat += [("baselines", f"bon{size}_majority", "majority vote", "tab:green", "--"),
                     ("baselines", f"bon{size}_oracle", "oracle (any correct)", "black", ":")]  # fmt: skip
        for arm, key, name, color, style in flat:
            ax.axhline(mean_std(runs, arm, key)[0], color=color, linestyle=style, linewidth=1.2, label=name)
        ax.set_xscale("log")
        budgets = sorted({b for arm in arms for b in budgets_of(runs[0], arm)})
        ax.set_xticks(budgets, [f"{b / 1000:g}k" if b >= 1000 else str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labelled responses (budget)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat[: len(PRM_PANELS)]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(handles.values(), handles.keys(), fontsize=8, loc="center")
    fig.suptitle(f"Implicit vs explicit PRMs at equal label budgets, modular addition with bug cells ({_title(runs)})",
                 fontsize=10)  # fmt: skip
    return _save(fig, path)
