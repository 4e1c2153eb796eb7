"""The README's first command: `trl-likelihood demo` runs offline, prints the table, saves models with cards."""

from __future__ import annotations

import os

import pytest

from trl_likelihood.cli import main

pytestmark = pytest.mark.slow


def test_demo_mixce_prints_table_and_saves_cards(tmp_path, capsys):
    assert main(["demo", "--method", "mixce", "--steps", "30", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| MLE (control) |" in out and "| MixCE eta=0.1 |" in out and "mass on impossible tokens" in out
    for arm in ("mle", "mixce-eta0.1"):
        files = set(os.listdir(tmp_path / "mixce" / arm))
        assert {"model.safetensors", "README.md", "tokenizer.json"} <= files
    assert "eta" in (tmp_path / "mixce" / "mixce-eta0.1" / "README.md").read_text()
