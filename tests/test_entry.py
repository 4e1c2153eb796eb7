"""The console script's front door answers --help without importing torch, TRL or the trainers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from trl_likelihood.entry import top_parser
from trl_likelihood.methods import CPU_RECIPE, cpu_recipe

REPO = Path(__file__).resolve().parent.parent

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


def _commands(text: str) -> list[str]:
    """Every ``accelerate launch`` command in ``text``, with backslash continuations joined."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    return [m.group(0).rstrip("`, ") for m in re.finditer(r"accelerate launch [^\n]*", joined)]


def _module_docstring_source(path: Path) -> str:
    return path.read_text().split('"""')[1]  # as written: a backslash ending a docstring line stays


def test_one_cpu_recipe_everywhere():
    """README, --help, cli.py's docstring and every launch script give the same two-process CPU command, word for
    word; any other CPU launch they show uses an engine config (``--config_file``), never accelerate's ``--cpu``."""
    places = {
        "README.md": ((REPO / "README.md").read_text(), cpu_recipe("mixce")),
        "trl-likelihood --help": (top_parser().format_help(), cpu_recipe("mixce")),
        "cli.py": (_module_docstring_source(REPO / "trl_likelihood" / "cli.py"), cpu_recipe("mixce")),
    }
    for script in ("mixce", "implicit_prm", "ddo", "sequencematch", "stepwise_prm"):
        path = REPO / "trainers" / f"{script}.py"
        places[f"trainers/{script}.py"] = (_module_docstring_source(path), cpu_recipe(script))
    for where, (text, recipe) in places.items():
        commands = _commands(text)
        assert recipe in commands, f"{where} lacks the CPU recipe: {commands}"
        for command in commands:
            assert " --cpu" not in command, f"{where}: {command}"
            if "cpu" in command and command != recipe:
                assert "--config_file" in command, f"{where} has a second CPU recipe: {command}"
    assert CPU_RECIPE.startswith("accelerate launch --multi_gpu ") and CPU_RECIPE.endswith(" --use_cpu")
