"""The card templates ship inside the wheel: build it, install it (not editable) away from the repository, render.

The source tree keeps the templates in ``hub_cards/`` and ``template_path`` falls back to it, so only a test that runs
outside the repository, on the installed files, shows that ``pyproject.toml``'s force-include really ships them.
Building needs ``hatchling`` in the environment (``--no-build-isolation``: no index is reachable in tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RENDER = """
import json, sys
from pathlib import Path
import trl_likelihood
from trl_likelihood.cards import CardInfo, render_card, template_path
from trl_likelihood.trainers.mixce import MIXCE_CITATION

info = CardInfo(
    model_name="tiny-mixce", method="MixCE", base_model="Qwen/Qwen2.5-0.5B", is_adapter=True,
    datasets=["user/data"], tags=["trl", "trl-likelihood", "mixce"], hub_model_id="user/tiny-mixce",
    hyperparameters={"eta": 0.3}, eval_metrics={"mixce/forward_nll": 1.25}, paper_id="2305.16958",
    citation=MIXCE_CITATION,
)
card = render_card("mixce.md", info)
print(json.dumps({
    "package": trl_likelihood.__file__, "template": str(template_path("mixce.md")),
    "library_name": card.data.library_name, "base_model": card.data.base_model, "text": card.text,
}))
"""


def run(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_ships_templates_and_renders_a_card(tmp_path):
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(REPO), "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("trl_likelihood-*.whl")

    templates = sorted(p.name for p in (REPO / "hub_cards").glob("*.md"))
    assert "mixce.md" in templates
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in templates:  # every template, byte for byte as in the source tree
            assert zf.read(f"trl_likelihood/hub_cards/{name}") == (REPO / "hub_cards" / name).read_bytes()
    assert "trl_likelihood/cards.py" in names
    assert not any(n.startswith(("tests/", "hub_cards/")) for n in names)

    site = tmp_path / "site"  # a non-editable install of the wheel alone; its dependencies come from this venv
    run(*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    out = json.loads(run(sys.executable, "-c", RENDER, cwd=elsewhere, env=env).stdout.strip().splitlines()[-1])

    assert Path(out["package"]).is_relative_to(site), f"imported {out['package']}, not the installed wheel"
    assert Path(out["template"]) == site / "trl_likelihood" / "hub_cards" / "mixce.md"
    assert out["library_name"] == "peft" and out["base_model"] == "Qwen/Qwen2.5-0.5B"
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/tiny-mixce")' in out["text"]
    assert "| `eta` | `0.3` |" in out["text"] and "| `mixce/forward_nll` | 1.25 |" in out["text"]
    assert "@inproceedings{zhang2023mixce" in out["text"] and "@software{vonwerra2020trl" in out["text"]
