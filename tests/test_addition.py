"""The addition lab task of SequenceMatch's efficacy study (ALGORITHMS.md 3(g)): problems, tokens, SFT's view of the
data, corruptions, and the metrics against oracles whose answers are known."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from trl_likelihood.backspace import BACKSPACE, add_backspace_token, augment_with_noise
from trl_likelihood.generation import sample_with_backspace
from trl_likelihood.lab.addition import (
    BKSPC_ID,
    CORRUPTIONS,
    AdditionOracle,
    AdditionTask,
    addition_metrics,
    answer_nll,
)
from trl_likelihood.lab.modarith import BOS_ID, EOS_ID, PAD_ID
from trl_likelihood.lab.models import tiny_causal_lm


@pytest.fixture(scope="module")
def task() -> AdditionTask:
    return AdditionTask(digits=2, n_train=300, n_test=60, seed=3)


def test_problems_are_distinct_two_digit_sums(task):
    pairs = [(a, b) for split in (task.train, task.test) for a, b in zip(split.a.tolist(), split.b.tolist())]
    assert len(pairs) == 360 and len(set(pairs)) == 360  # train and test never share a problem
    assert all(10 <= x <= 99 for pair in pairs for x in pair)
    assert task.prompt_texts(task.test[:1]) == [f"{task.test.a[0]}+{task.test.b[0]}="]
    for (a, b), answer in zip(pairs[:50], task.answer_texts(task.train[:50])):
        assert int(answer[::-1]) == a + b and answer[-1] != "0"  # least significant first, no leading zero
    again, other = AdditionTask(2, 300, 60, seed=3), AdditionTask(2, 300, 60, seed=4)
    assert np.array_equal(again.test.a, task.test.a) and not np.array_equal(other.test.a, task.test.a)
    assert task.seq_len == 11 and AdditionTask(3, 10, 10).seq_len == 14


def test_answer_text_by_hand():
    task = AdditionTask(digits=2, n_train=1, n_test=0)
    problems = task.train
    problems.a[:], problems.b[:] = 47, 85
    assert task.prompt_texts(problems) == ["47+85="] and task.answer_texts(problems) == ["231"]
    assert task.prompt_ids(problems) == [[BOS_ID, 8, 11, 14, 12, 9, 15]]
    assert task.answer_ids(problems) == [[6, 7, 5]]


def test_tokenizer_one_symbol_one_token(task):
    tok = task.tokenizer()
    assert len(tok) == 16 and tok.convert_tokens_to_ids(BACKSPACE) == BKSPC_ID == task.bkspc_id
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    prompt, answer = task.prompt_texts(task.test[:5]), task.answer_texts(task.test[:5])
    assert [tok(p)["input_ids"] for p in prompt] == task.prompt_ids(task.test[:5])
    assert [tok(a, add_special_tokens=False)["input_ids"] for a in answer] == task.answer_ids(task.test[:5])
    assert tok("3<bkspc>4", add_special_tokens=False)["input_ids"] == [7, BKSPC_ID, 8]  # digit d has id 4 + d
    assert tok.decode(task.prompt_ids(task.test[:1])[0], skip_special_tokens=True) == prompt[0]
    with pytest.raises(Exception, match="WordLevel"):  # an unknown symbol (here a space) is never mapped silently
        tok("1 2")
    model = tiny_causal_lm(tok, hidden_size=16)
    assert add_backspace_token(model, tok) == BKSPC_ID and len(tok) == 16  # already there: nothing added
    assert model.get_input_embeddings().weight.shape[0] == 16


def test_sft_tokenises_bos_prompt_answer_eos(task, tmp_path):
    from trl import SFTConfig, SFTTrainer

    tok = task.tokenizer()
    args = SFTConfig(str(tmp_path), max_steps=1, use_cpu=True, bf16=False, report_to="none", max_length=task.seq_len)
    data = task.dataset("test").select(range(8))
    trainer = SFTTrainer(model=tiny_causal_lm(tok), args=args, train_dataset=data, processing_class=tok)
    problems = task.test[:8]
    for row, prompt, answer in zip(trainer.train_dataset, task.prompt_ids(problems), task.answer_ids(problems)):
        assert row["input_ids"] == prompt + answer + [EOS_ID]
        assert [t for t in row["labels"] if t != -100] == answer + [EOS_ID]  # the prompt is never a target


def test_noise_ids_are_the_digits(task):
    noise = task.noise_ids()
    assert task.tokenizer().decode(noise) == "0123456789"
    prompt, answer = task.prompt_ids(task.test[:1])[0], task.answer_ids(task.test[:1])[0]
    traj = augment_with_noise(
        prompt, answer + [EOS_ID], p=1.0, bkspc_id=BKSPC_ID, noise_ids=noise, rng=random.Random(0)
    )
    inserted = [t for t, a in zip(traj.stream, traj.is_action) if not a]
    assert len(inserted) == len(answer) + 1 and set(inserted) <= set(noise)
    assert traj.completion(BKSPC_ID) == answer + [EOS_ID]


def test_corrupted_prefixes_by_kind(task):
    problems = task.test
    right = [[t - 4 for t in a[:2]] for a in task.answer_ids(problems)]  # digit id = 4 + digit
    seen = set()
    for kind in CORRUPTIONS:
        prefixes = task.corrupted_prefixes(problems, kind, np.random.default_rng(0))
        for prefix, (r0, r1) in zip(prefixes, right):
            digits = [t - 4 for t in prefix]
            assert all(0 <= d <= 9 for d in digits)
            if kind == "first":
                assert len(digits) == 1 and digits[0] != r0
            elif kind == "later":
                assert digits[0] == r0 and digits[1] != r1
            elif kind == "two":
                assert digits[0] != r0 and digits[1] != r1
            else:  # buried
                assert digits[0] != r0 and digits[1] == r1
            seen.add(digits[0])
    assert len(seen) == 10  # wrong digits are drawn, not a fixed offset
    with pytest.raises(ValueError, match="`kind`"):
        task.corrupted_prefixes(problems, "carry", np.random.default_rng(0))


def test_oracle_backspaces_out_of_two_wrong_digits(task):
    oracle = AdditionOracle(task)
    problems = task.test[:4]
    prefixes = task.corrupted_prefixes(problems, "two", np.random.default_rng(1))
    out = sample_with_backspace(
        oracle, task.prompt_ids(problems), 10, bkspc_token_id=BKSPC_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        prefixes=prefixes,
    )  # fmt: skip
    for actions, completion, answer in zip(out.actions, out.completions, task.answer_ids(problems)):
        assert actions == [BKSPC_ID, BKSPC_ID] + answer + [EOS_ID]
        assert completion == answer + [EOS_ID]


def test_metrics_of_the_oracles(task):
    recovering = addition_metrics(AdditionOracle(task), task, n=40, batch_size=16, seed=2)
    assert recovering["accuracy"] == 1.0 and recovering["bkspc_rate_clean"] == 0.0 and recovering["nll"] == 0.0
    for kind in CORRUPTIONS:
        assert recovering[f"recovery_{kind}"] == 1.0 and recovering[f"bkspc_rate_{kind}"] == 1.0
    mle_like = addition_metrics(AdditionOracle(task, backspace=False), task, n=40, batch_size=16, seed=2)
    assert mle_like["accuracy"] == 1.0
    for kind in CORRUPTIONS:
        assert mle_like[f"recovery_{kind}"] == 0.0 and mle_like[f"bkspc_rate_{kind}"] == 0.0


class _Blend(torch.nn.Module):
    """Probabilities ``w * oracle + (1 - w) / V``: the NLL of an answer token is exactly ``-log(w + (1 - w) / V)``."""

    def __init__(self, oracle: AdditionOracle, w: float) -> None:
        super().__init__()
        self.oracle, self.w = oracle, w

    def forward(self, input_ids, attention_mask=None, **kwargs):
        probs = self.oracle(input_ids, attention_mask=attention_mask).logits.softmax(-1)
        return CausalLMOutputWithPast(logits=(self.w * probs + (1 - self.w) / probs.shape[-1]).log())


def test_answer_nll_counts_answer_and_eos_tokens_only(task):
    blend = _Blend(AdditionOracle(task), w=0.5)  # prompt positions are uniform: counting one would add log 16 terms
    assert answer_nll(blend, task, task.test[:30], batch_size=7) == pytest.approx(-math.log(0.5 + 0.5 / 16), rel=1e-6)
    uniform = _Blend(AdditionOracle(task), w=0.0)
    assert answer_nll(uniform, task, task.test[:30]) == pytest.approx(math.log(16), rel=1e-6)


def test_metrics_run_on_a_tiny_model_and_are_seeded(task):
    model = tiny_causal_lm(task.tokenizer(), hidden_size=16, seed=1)
    first = addition_metrics(model, task, n=24, batch_size=10, seed=5)
    assert first == addition_metrics(model, task, n=24, batch_size=10, seed=5)
    assert set(first) == {"accuracy", "bkspc_rate_clean", "nll"} | {
        f"{m}_{k}" for k in CORRUPTIONS for m in ("recovery", "bkspc_rate")
    }
    assert all(0.0 <= v <= 1.0 for k, v in first.items() if k != "nll")
    assert math.isfinite(first["nll"]) and first["nll"] > 1.0  # untrained: near log 16
    assert first["bkspc_rate_clean"] > 0  # an untrained model does emit <bkspc>: the rate is measured, not assumed


def test_bad_arguments(task):
    with pytest.raises(ValueError, match="distinct"):
        AdditionTask(digits=1, n_train=90, n_test=20)
    with pytest.raises(ValueError, match="`split`"):
        task.dataset("valid")


def test_one_digit_task_has_only_the_first_digit_corruption():
    task = AdditionTask(digits=1, n_train=40, n_test=20, seed=0)
    assert any(len(a) == 1 for a in task.answer_texts(task.test))  # e.g. 3+4=7: no second digit to corrupt
    with pytest.raises(ValueError, match="two answer digits"):
        task.corrupted_prefixes(task.test, "two", np.random.default_rng(0))
    metrics = addition_metrics(AdditionOracle(task), task, n=20, batch_size=8)
    assert set(metrics) == {"accuracy", "bkspc_rate_clean", "recovery_first", "bkspc_rate_first", "nll"}
    assert metrics["recovery_first"] == 1.0 and metrics["accuracy"] == 1.0
