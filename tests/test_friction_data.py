"""Data a TRL user gave that trained wrong or failed late: message content as a list of parts, an empty message list,
and a bad row deep in a stream. Each trains as its text would, or is refused with the column and row named."""

from __future__ import annotations

import re

import pytest
from datasets import Dataset

from tests.reliability import CASES
from tests.tiny import CORPUS
from trl_likelihood.data import sft_ready

SFT_TRAINERS = ("mixce", "ddo", "sequencematch")


def _chat(parts: bool) -> Dataset:
    def content(text: str):  # TRL's multimodal form, here with two text parts
        return [{"type": "text", "text": text[:5]}, {"type": "text", "text": text[5:]}] if parts else text

    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": content(s[:20])}, {"role": "assistant", "content": content(s[20:])}]
                for s in CORPUS[:8]
            ]
        }
    )


@pytest.mark.parametrize("name", SFT_TRAINERS)
def test_text_parts_train_as_their_text(tiny_model_dir, tmp_path, name):
    """A text-only tokenizer's chat template renders a list of parts as its Python repr; the parts are joined."""
    case = CASES[name]
    tokenized = {}
    for parts in (False, True):
        args = case.args(tmp_path / str(parts), max_steps=1)
        tokenized[parts] = case.trainer(tiny_model_dir, args, _chat(parts)).train_dataset["input_ids"]
    assert tokenized[True] == tokenized[False]


def test_an_image_part_for_a_text_only_tokenizer_is_refused(tiny_model_dir, tmp_path):
    rows = _chat(parts=True).to_list()
    rows[3]["messages"][1]["content"] = [{"type": "image"}, {"type": "text", "text": "a cat"}]
    case = CASES["mixce"]
    message = r"train_dataset: column 'messages', row 3, message 1: a 'image' content part, .* text-only tokenizer"
    with pytest.raises(ValueError, match=message):
        case.trainer(tiny_model_dir, case.args(tmp_path, max_steps=1), Dataset.from_list(rows))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], r"column 'messages', row 2: an empty message list"),
        ([{"role": "user", "content": [{"text": "no type"}]}], r"part 0: expected a \{'type'"),
        ([{"role": "user", "content": [{"type": "text"}]}], r"row 2, message 0, content part 0: a text part needs"),
    ],
)
def test_malformed_messages_are_refused_with_the_row(value, message):
    good = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    dataset = Dataset.from_dict({"messages": [good, good, value, good]})
    for data in (dataset, dataset.to_iterable_dataset()):
        with pytest.raises(ValueError, match=message):
            sft_ready(data, CASES["mixce"].args("unused"), None, "train_dataset")


def test_a_bad_row_past_the_checked_head_of_a_stream_is_named(tiny_model_dir, tmp_path):
    """Only the first 64 streamed rows can be checked before training; row 70 fails when it is read, named."""
    texts: list[str | None] = list(CORPUS[:80])
    texts[70] = None
    stream = Dataset.from_dict({"text": texts}).to_iterable_dataset()
    case = CASES["mixce"]
    trainer = case.trainer(tiny_model_dir, case.args(tmp_path, max_steps=10, per_device_train_batch_size=8), stream)
    with pytest.raises(ValueError, match=r"train_dataset: column 'text', row 70 is missing \(None\); expected text"):
        trainer.train()


@pytest.mark.parametrize(
    ("settings", "refused"),
    [({}, "`sm_weight`=0.5 and `noise_source`='data'"), ({"sm_weight": 0.0}, "`noise_source`='data' draw")],
)
def test_sequencematch_refuses_a_stream_it_would_index(tiny_model_dir, tmp_path, settings, refused):
    case = CASES["sequencematch"]
    stream = case.dataset().to_iterable_dataset()
    with pytest.raises(ValueError, match=f"IterableDataset \\(streaming\\), but {refused}"):
        case.trainer(tiny_model_dir, case.args(tmp_path, settings, max_steps=1), stream)


def test_sequencematch_trains_behaviour_cloning_on_a_stream(tiny_model_dir, tmp_path):
    case = CASES["sequencematch"]
    stream = case.dataset().to_iterable_dataset()
    trainer = case.trainer(
        tiny_model_dir, case.args(tmp_path, {"sm_weight": 0.0, "noise_source": "uniform"}, max_steps=2), stream
    )
    trainer.train()
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2]


@pytest.mark.parametrize("name", sorted(CASES))
def test_rows_dropped_by_truncation_are_counted_per_split(tiny_model_dir, tmp_path, caplog, name):
    """SFT drops a row whose prompt fills ``max_length`` (nothing left to score) without a word: say how many."""
    case = CASES[name]
    long_prompt = " ".join(CORPUS[:8])  # far over max_length=64 tokens

    def with_long_prompts(rows: list[dict], count: int) -> Dataset:
        return Dataset.from_list([{**r, "prompt": long_prompt} if i < count else r for i, r in enumerate(rows)])

    rows = case.dataset().to_list()
    train, evaluation = with_long_prompts(rows, 3), with_long_prompts(rows[:8], 1)
    with caplog.at_level("WARNING"):
        trainer = case.trainer(tiny_model_dir, case.args(tmp_path, max_steps=1), train, eval_dataset=evaluation)
    assert trainer.dropped_rows == {"train_dataset": 3, "eval_dataset": 1}
    assert f"train_dataset: 3 of {len(rows)} rows dropped in preparation" in caplog.text
    assert "eval_dataset: 1 of 8 rows dropped" in caplog.text


@pytest.mark.parametrize(
    ("fake", "real", "max_new_tokens", "length_normalize", "advice"),
    [
        (2.0, 10.0, 2, False, r"`max_new_tokens`=2 cuts the fakes short: raise it, or leave it unset"),
        (2.0, 10.0, 2, True, r"`max_new_tokens`=2 cuts the fakes short"),  # normalising does not undo a cut
        (2.0, 10.0, None, False, r"ends its samples early: `length_normalize=True`"),
        (20.0, 10.0, 30, False, r"runs on where the data stops: `length_normalize=True` .*, or lower `max_new_t"),
        (20.0, 10.0, None, True, None),
        (9.0, 10.0, 2, False, None),
    ],
)
def test_ddo_length_advice_fits_the_cause(fake, real, max_new_tokens, length_normalize, advice):
    from trl_likelihood.trainers.ddo import length_mismatch_advice

    said = length_mismatch_advice(fake, real, max_new_tokens, length_normalize)
    assert said is None if advice is None else re.search(advice, said)


def test_ddo_length_warning_is_said_once(tiny_model_dir, tmp_path, caplog):
    case = CASES["ddo"]
    args = case.args(tmp_path, {"max_new_tokens": 1}, max_steps=3, logging_steps=1)
    trainer = case.trainer(tiny_model_dir, args)
    with caplog.at_level("WARNING"):
        trainer.train()
    said = [r.getMessage() for r in caplog.records if "Fake mean length" in r.getMessage()]
    assert len(said) == 1 and "`max_new_tokens`=1 cuts the fakes short" in said[0]
