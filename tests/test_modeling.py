"""The SFT-row facts of ``modeling``: where a tokenized row's prompt ends, checked by hand and on rows SFT prepared."""

from __future__ import annotations

import pytest
from trl import SFTConfig, SFTTrainer

from tests.conftest import cpu_args
from trl_likelihood.modeling import prompt_end


def test_prompt_end_by_hand():
    x = -100
    assert prompt_end([5, x, x, 7, 8]) == 3  # the first scored token
    assert prompt_end([5, 6, 7]) == 1  # everything scored (plain text): the prompt is token 0, never a target
    assert prompt_end([5, 6, x, 8]) == 1  # a label on token 0 is not a target: nothing predicts it
    assert prompt_end([x, x, x, 7, x, x], length=3) == 2  # past `length` is padding; nothing scored: all but the last
    assert prompt_end([x, x, 7, 8], length=4) == 2
    assert prompt_end([x]) == 1  # a one-token row: that token


@pytest.mark.parametrize("kind", ["text", "prompt_completion", "messages"])
def test_prompt_end_of_rows_sft_prepared(kind, tiny_model_dir, lm_dataset, prompt_completion_dataset, tmp_path):
    data = {"text": lm_dataset, "prompt_completion": prompt_completion_dataset}.get(kind)
    if kind == "messages":  # conversational prompt-completion: the prompt is the chat template's, up to its answer
        data = prompt_completion_dataset.map(
            lambda ex: {"prompt": [{"role": "user", "content": ex["prompt"]}],
                        "completion": [{"role": "assistant", "content": ex["completion"]}]}
        )  # fmt: skip
    args = SFTConfig(str(tmp_path), **cpu_args())
    trainer = SFTTrainer(tiny_model_dir, args=args, train_dataset=data)
    tok = trainer.processing_class
    for i in range(4):
        row = trainer.train_dataset[i]
        start = prompt_end(row["labels"])
        if kind == "text":
            assert start == 1
        elif kind == "prompt_completion":
            assert row["input_ids"][:start] == tok(data[i]["prompt"])["input_ids"]
        else:
            prompt = tok.apply_chat_template(data[i]["prompt"], add_generation_prompt=True, tokenize=True)
            assert row["input_ids"][:start] == list(getattr(prompt, "input_ids", prompt))
