"""Settings a method would silently ignore or misread are refused before training, naming the field: a backspace token
the vocabulary already uses, the implicit PRM scoring prompt tokens or packing responses padding-free, and a
``compute_metrics`` that loss-only evaluation would never call."""

from __future__ import annotations

import re

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import cpu_args
from tests.reliability import CASES
from trl_likelihood import ImplicitPRMConfig
from trl_likelihood.backspace import add_backspace_token


@pytest.mark.parametrize(
    ("token", "use"),
    [(".", "an ordinary token of the vocabulary"), ("EOS", "the tokenizer's eos_token"), ("PAD", "pad_token")],
)
def test_a_backspace_token_already_in_the_vocabulary_is_refused(tiny_model_dir, tmp_path, token, use):
    """With "." as backspace, `...samples.<eos>` would train as `...sampl<eos>`: every "." a deletion."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    token = {"EOS": tokenizer.eos_token, "PAD": tokenizer.pad_token}.get(token, token)
    case = CASES["sequencematch"]
    with pytest.raises(ValueError, match=rf"`backspace_token` '{re.escape(token)}' is already .*{use}"):
        case.trainer(tiny_model_dir, case.args(tmp_path, {"backspace_token": token}))


def test_a_backspace_added_by_an_earlier_run_is_reused(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = add_backspace_token(model, tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    assert add_backspace_token(model, tokenizer) == first  # the saved tokenizer of a SequenceMatch run: reused
    assert model.get_input_embeddings().weight.shape[0] == rows


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("completion_only_loss", "`completion_only_loss=False` would score the prompt tokens too"),
        ("padding_free", "`padding_free=True` is not supported"),
    ],
)
def test_implicit_prm_refuses_scoring_prompts_and_padding_free(tmp_path, field, message):
    value = False if field == "completion_only_loss" else True
    with pytest.raises(ValueError, match=message):
        ImplicitPRMConfig(str(tmp_path), **{field: value}, **cpu_args())


@pytest.mark.parametrize("name", ["implicit_prm", "ddo", "sequencematch"])
def test_compute_metrics_is_refused_where_it_would_never_be_called(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    with pytest.raises(ValueError, match="`compute_metrics` would never be called"):
        case.trainer(tiny_model_dir, case.args(tmp_path), compute_metrics=lambda prediction: {"x": 1.0})
