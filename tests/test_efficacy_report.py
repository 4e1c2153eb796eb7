"""`benchmarks/efficacy.py` writes its table and plots from the runs it recorded; the plots' statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trl_likelihood.lab import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _efficacy(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "efficacy.py"), *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 5_000


@pytest.mark.slow
def test_quick_report_writes_table_and_plots(tmp_path):
    out = _efficacy("--methods", "mixce", "ddo", "--seeds", "0", "--quick", "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert _is_png(tmp_path / "mixce.png") and _is_png(tmp_path / "ddo.png")
    assert not (tmp_path / "implicit-prm.png").exists()  # not selected
    report = (tmp_path / "efficacy.md").read_text()
    assert "![" in report and "(mixce.png)" in report and "(ddo.png)" in report
    assert "| 1 (MLE) |" in report and "| DDO, 2 rounds (20 steps) |" in report
    runs = json.loads((tmp_path / "efficacy.json").read_text())["methods"]
    assert set(runs) == {"mixce", "ddo"} and list(runs["mixce"]["runs"]) == ["0"]
    mle_mass = runs["mixce"]["runs"]["0"]["1.0"]["zero_mass"]  # the table shows the recorded runs, not others
    assert f"| 1 (MLE) | {mle_mass:.4g} ± 0 |" in report
    ddo_js = runs["ddo"]["runs"]["0"]["ddo@20"]["js"]
    assert f"{ddo_js:.4g} ± 0" in report

    # --replot: no training, the same table from efficacy.json, the plots drawn again
    for name in ("efficacy.md", "mixce.png", "ddo.png"):
        os.remove(tmp_path / name)
    replot = _efficacy("--replot", "--output_dir", str(tmp_path))
    assert replot.returncode == 0, replot.stderr[-3000:]
    assert (tmp_path / "efficacy.md").read_text() == report
    assert _is_png(tmp_path / "mixce.png") and _is_png(tmp_path / "ddo.png")


def test_mean_std_over_seeds():
    runs = [{"a": {"x": 1.0}}, {"a": {"x": 2.0}}, {"a": {"x": 4.0}}]
    mean, std = plots.mean_std(runs, "a", "x")
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert plots.mean_std(runs[:1], "a", "x") == (1.0, 0.0)  # one seed: no spread
    paired = [{"a": {"x": 1.0}, "b": {"x": 0.5}}, {"a": {"x": 4.0}, "b": {"x": 3.0}}]  # -50 %, -25 %: within seed
    mean, std = plots.paired_change(paired, "b", "a", "x")
    assert mean == pytest.approx(-37.5) and std == pytest.approx(np.std([-50, -25], ddof=1))


def _bigram(scale: float) -> dict[str, float]:
    return {"zero_mass": 0.1 * scale, "invalid_rate": 0.3 * scale, "js": 0.02 * scale, "nll": 1.7 + scale}


def test_plots_from_each_experiments_results(tmp_path):
    """Each plot takes its experiment's result shape; two seeds, so error bars are drawn."""
    mixce = [{1.0: _bigram(1.0), 0.5: _bigram(0.8), 0.1: _bigram(0.5), "oracle": _bigram(0.0)} for _ in range(2)]
    ddo = [{"reference": _bigram(2), "mle@10": _bigram(1), "ddo@10": _bigram(0.7), "mle@20": _bigram(0.9),
            "ddo@20": _bigram(0.8)} for _ in range(2)]  # fmt: skip
    assert plots.ddo_steps(ddo[0]) == [10, 20]
    scorer = {"bug_auroc": 0.9, "step_auroc": 0.95} | {f"bon{n}_{k}": 0.5 for n in (1, 4, 16) for k in ("min", "sum")}
    base = {f"bon{n}_{k}": 0.4 for n in (1, 4, 16) for k in ("random", "majority", "oracle")}
    prm = [{"implicit_prm_ce": scorer, "log_pi_ref": scorer, "random": scorer, "baselines": base} for _ in range(2)]
    paths = [
        plots.plot_mixce(mixce, str(tmp_path / "m.png")),
        plots.plot_ddo(ddo, str(tmp_path / "d.png")),
        plots.plot_implicit_prm(prm, str(tmp_path / "sub" / "p.png")),
    ]
    assert all(_is_png(path) for path in paths)


def test_noise_sweep_table_pairs_the_arms_by_seed():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import sequencematch_noise_sweep as sweep
    finally:
        sys.path.pop(0)

    def run(bc: float, sm: float) -> dict:
        metrics = {"recovery_later": 0.5, "accuracy": 0.9}
        return {"BC": {**metrics, "recovery_two": bc}, "SM": {**metrics, "recovery_two": sm}}

    # SM is 0.1 above BC in every seed, while the seeds themselves spread widely.
    table = sweep.markdown_table({"0.2": {"0": run(0.1, 0.2), "1": run(0.7, 0.8), "2": run(0.4, 0.5)}})
    row = table.splitlines()[2].split(" | ")
    assert row[0] == "| 0.2"
    assert row[2] == "0.40 ± 0.30 / 0.50 ± 0.30 / +0.10 ± 0.00"  # two wrong digits: BC / SM / paired SM − BC
    assert row[1] == "0.50 ± 0.00 / 0.50 ± 0.00 / +0.00 ± 0.00"
