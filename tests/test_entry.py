"""The console script's front door answers --help without importing torch, TRL or the trainers."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import contextlib, io, sys
from trl_likelihood.entry import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit:
        pass
heavy = [m for m in ("torch", "trl", "transformers", "trl_likelihood.trainers") if m in sys.modules]
print("HEAVY", heavy)
print(out.getvalue())
"""


def test_help_is_light_and_lists_every_method():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert "HEAVY []" in proc.stdout
    for name in ("mixce", "implicit-prm", "ddo", "demo"):
        assert name in proc.stdout


def test_package_exports_load_on_first_use():
    import trl_likelihood

    assert trl_likelihood.MixCETrainer.__name__ == "MixCETrainer"
    assert "ImplicitPRM" in dir(trl_likelihood)
