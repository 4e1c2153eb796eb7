"""Writes the quickstart notebooks from their cell lists: ``python notebooks/build.py`` (``--check`` compares).

The notebooks are generated, never edited by hand: the modules in ``notebooks/quickstarts/`` are what a reviewer
reads, and the ``.ipynb`` files are stored without outputs and with fixed cell ids, so rebuilding is byte-for-byte
reproducible. ``tests/test_notebooks.py`` checks that the stored files match and executes each one.

Each quickstart trains on an embedded lab task (``trl_likelihood/lab``: no download, CPU, about a minute), makes the
one-line swap from the TRL trainer it replaces, looks at the logged metrics and one plot, and saves the model with its
card. To add a method: write ``quickstarts/<method>.py`` with ``cells()`` and ``QUICKSTART``
(copy ``mixce.py``, also an ``SFTTrainer`` swap) and list it in ``NOTEBOOKS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_notebook
from quickstarts import ddo, implicit_prm, mixce, sequencematch  # this script's folder is first on sys.path
from quickstarts.cells import Quickstart

HERE = Path(__file__).resolve().parent
NOTEBOOKS: list[Quickstart] = [
    mixce.QUICKSTART,
    implicit_prm.QUICKSTART,
    ddo.QUICKSTART,
    sequencematch.QUICKSTART,
]


def notebook(quickstart: Quickstart) -> NotebookNode:
    """The notebook with fixed cell ids and no outputs, so that the same cells always give the same file."""
    nb = new_notebook(cells=quickstart.cells())
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render(quickstart: Quickstart) -> str:
    return nbformat.writes(notebook(quickstart))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a stored notebook differs from its cells")
    args = parser.parse_args(argv)
    stale = []
    for quickstart in NOTEBOOKS:
        path, text = HERE / f"{quickstart.name}.ipynb", render(quickstart)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `python notebooks/build.py`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
