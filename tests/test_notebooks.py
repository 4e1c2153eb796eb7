"""The quickstart notebooks: stored exactly as ``notebooks/build.py`` writes them (no outputs), and each one runs.

The slow tests execute every notebook with nbclient on a ``python3`` kernel of this interpreter (a kernel spec written
here, so a fresh ``pip install -e ".[test]"`` needs no ``ipykernel install``), offline, in a temporary directory, and
check what it must leave behind: no error, one plot, the model card with the method's tag.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 300  # seconds per cell: the longest cell trains for under a minute on a shared 2-core machine


def _load_build() -> ModuleType:
    """``notebooks/build.py`` as a module, with ``notebooks/`` on the path as when it runs as a script."""
    if str(NOTEBOOKS) not in sys.path:
        sys.path.insert(0, str(NOTEBOOKS))  # for its ``quickstarts`` package
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def _text(output: dict) -> str:
    return output.get("text", "") + output.get("data", {}).get("text/plain", "")


def test_every_stored_notebook_is_built_by_build_py():
    stored = {path.stem for path in NOTEBOOKS.glob("*.ipynb")}
    assert stored == {quickstart.name for quickstart in build.NOTEBOOKS}
    assert build.main(["--check"]) == 0  # a hand edit, or cells changed without a rebuild, fails here


@pytest.mark.parametrize("quickstart", build.NOTEBOOKS, ids=lambda q: q.name)
def test_notebook_is_stored_clean_and_shows_the_swap(quickstart):
    nb = nbformat.read(NOTEBOOKS / f"{quickstart.name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert any("# was: from trl import" in cell.source for cell in code)  # the one-line swap, next to what it replaces
    assert nb.metadata.kernelspec.name == "python3"


def test_check_flags_a_stale_notebook(tmp_path, monkeypatch):
    quickstart = build.NOTEBOOKS[0]
    (tmp_path / f"{quickstart.name}.ipynb").write_text(build.render(quickstart).replace("eta", "ETA"))
    monkeypatch.setattr(build, "HERE", tmp_path)
    monkeypatch.setattr(build, "NOTEBOOKS", [quickstart])
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0 and build.main(["--check"]) == 0  # rebuilding fixes it


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A ``python3`` kernel spec that runs this interpreter, first on ``JUPYTER_PATH``, and an offline environment.

    The spec ipykernel installs says ``python``, whichever that is on ``PATH``; this one names ``sys.executable``, so
    the kernel imports the package under test whether or not the venv is activated or a spec is installed at all.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Python 3 (tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(name, "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.setenv("MPLBACKEND", "Agg")  # headless; the notebooks' `%matplotlib inline` still captures the figure
        yield argv


@pytest.mark.slow
@pytest.mark.parametrize("quickstart", build.NOTEBOOKS, ids=lambda q: q.name)
def test_notebook_runs(quickstart, kernel_env, tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    assert KernelSpecManager().get_kernel_spec("python3").argv == kernel_env  # ours, not an installed one
    nb = nbformat.read(NOTEBOOKS / f"{quickstart.name}.ipynb", as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1  # the plot, shown inline
    printed = "".join(_text(o) for o in outputs)
    for expected in quickstart.expect:
        assert expected in printed, f"{expected!r} missing from the outputs of {quickstart.name}"
    card = (tmp_path / quickstart.card).read_text()
    front_matter = card.split("---")[1]
    assert f"- {quickstart.tag}\n" in front_matter and "- trl-likelihood\n" in front_matter
    assert card[: card.index("\n## ")] in printed  # the notebook shows the card's head
