"""The README's first command: `trl-likelihood demo` runs offline, prints one table, saves models with cards, plots."""

from __future__ import annotations

import os

import pytest

from trl_likelihood.cli import main
from trl_likelihood.demo import Report, Row, combined_table


@pytest.mark.slow
def test_demo_all_methods_prints_one_table_saves_cards_and_plots(tmp_path, capsys):
    assert main(["demo", "--steps", "20", "--output_dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert out.count("| method | control | metric |") == 1  # one combined table
    rows = ("| MixCE eta=0.1 | MLE, 20 steps |", "| implicit PRM | log pi_ref", "| DDO, 1 round | MLE, 10 steps")
    for row in (*rows, "| SequenceMatch | MLE, 50 steps |"):
        assert row in out
    assert "mass on impossible tokens" in out and "best-of-16 accuracy" in out
    assert "{'loss'" not in out  # training logs stay out of the output
    assert "14/14" in captured.err  # every stage: 4 MixCE, 2 PRM, 3 DDO, 5 SequenceMatch
    assert "recovery from a wrong 1st digit" in out
    for plot in ("mixce.png", "implicit-prm.png", "ddo.png", "sequencematch.png"):
        assert os.path.getsize(tmp_path / plot) > 5_000 and str(tmp_path / plot) in out
    arms = ("mixce/mle", "mixce/mixce-eta0.1", "implicit-prm/implicit-prm-ce", "ddo/mle", "ddo/ddo")
    for arm in (*arms, "sequencematch/mle", "sequencematch/sm"):
        files = set(os.listdir(tmp_path / arm))
        assert {"README.md", "tokenizer.json"} <= files and any(f.endswith(".safetensors") for f in files), arm
    assert "eta" in (tmp_path / "mixce" / "mixce-eta0.1" / "README.md").read_text()
    assert "DDO" in (tmp_path / "ddo" / "ddo" / "README.md").read_text()
    assert "<bkspc>" in (tmp_path / "sequencematch" / "sm" / "README.md").read_text()


def test_combined_table_changes():
    """Relative rows show the % change, absolute rows (AUROC, accuracy) the difference; a zero control has no %."""
    rows = [Row("mass", 0.02, 0.01), Row("AUROC", 0.25, 0.75, relative=False), Row("js", 0.0, 0.1)]
    table = combined_table([Report("m", "c", "", rows)]).splitlines()
    assert table[2] == "| m | c | mass | 0.02 | 0.01 | -50% |"
    assert table[3] == "|  |  | AUROC | 0.25 | 0.75 | +0.500 |"
    assert table[4].endswith("| n/a |")
