"""Private TRL is touched only in ``trl_likelihood/_compat.py``: a TRL release that moves a private helper breaks
that file and its test (test_compat), nowhere else. ``.ci/drift`` runs the suite against the newest TRL 1.x.

Private means a module or name starting with ``_`` under ``trl`` (``trl._compat``, ``SFTTrainer._prepare_dataset``),
or anything from ``trl.trainer.utils``, TRL's unversioned grab-bag. Overriding a TRL method in a subclass is not an
import and is not flagged here; those overrides are listed in the trainers' docstrings.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {Path(REPO, "trl_likelihood", "_compat.py")}
INTERNAL_MODULES = ("trl.trainer.utils",)


def _is_private(dotted: str) -> bool:
    parts = dotted.split(".")
    internal = any(dotted == m or dotted.startswith(m + ".") for m in INTERNAL_MODULES)
    return parts[0] == "trl" and (internal or any(p.startswith("_") and not p.startswith("__") for p in parts))


def private_trl_uses(source: str) -> list[str]:
    """``import``s of private TRL and attribute reads of private names on objects imported from TRL."""
    found, trl_names = [], set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "trl":
                    trl_names.add((alias.asname or alias.name).split(".")[0])
                    found += [alias.name] if _is_private(alias.name) else []
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "trl":
            for alias in node.names:
                trl_names.add(alias.asname or alias.name)
                found += [f"{node.module}.{alias.name}"] if _is_private(f"{node.module}.{alias.name}") else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in trl_names:
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from trl.trainer.utils import disable_dropout_in_model", ["trl.trainer.utils.disable_dropout_in_model"]),
        ("import trl._compat", ["trl._compat"]),
        ("from trl import _private", ["trl._private"]),
        ("import trl\ntrl.SFTTrainer._prepare_dataset(x)", ["trl.SFTTrainer._prepare_dataset (line 2)"]),
        ("from trl import SFTTrainer as S\nS._prepare_dataset(x)", ["S._prepare_dataset (line 2)"]),
        ("from trl import SFTConfig, SFTTrainer\nimport trl\nv = trl.__version__\nself._metrics", []),
    ],
)
def test_the_checker_finds_private_uses(source, expected):
    assert private_trl_uses(source) == expected


def test_only_the_compat_module_touches_private_trl():
    files = [*Path(REPO, "trl_likelihood").rglob("*.py"), *Path(REPO, "trainers").glob("*.py")]
    offenders = {
        str(path.relative_to(REPO)): uses
        for path in sorted(files)
        if path not in ALLOWED and (uses := private_trl_uses(path.read_text(encoding="utf-8")))
    }
    assert not offenders, f"private TRL outside trl_likelihood/_compat.py: {offenders}"
    assert private_trl_uses(Path(REPO, "trl_likelihood", "_compat.py").read_text())  # the checker sees real uses
