"""The method registry is the one list of methods: every row has its trainer module, launch script and card, and the
console entry, the CLI and the package exports follow it."""

from __future__ import annotations

import os

import pytest

import trl_likelihood
from trl_likelihood.entry import top_parser
from trl_likelihood.methods import METHODS, method_of_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_its_module_script_card_and_exports(name):
    method = METHODS[name]
    assert os.path.isfile(os.path.join(REPO, method.script)) and method_of_script(method.script) == name
    assert os.path.isfile(os.path.join(REPO, "hub_cards", method.card_template))
    assert method.trainer_class._card_template == method.card_template
    assert getattr(trl_likelihood, method.config) is method.config_class  # exported by the package
    assert getattr(trl_likelihood, method.trainer) is method.trainer_class


def test_the_console_entry_lists_every_method_and_nothing_else():
    subparsers = next(a for a in top_parser()._actions if a.dest == "method")
    assert set(subparsers.choices) - {"demo", "evaluate-prm", "score"} == set(METHODS)
    assert {f"trainers/{f}" for f in os.listdir(os.path.join(REPO, "trainers")) if f.endswith(".py")} == {
        m.script for m in METHODS.values()
    }
