"""The bigram lab: the table is as ALGORITHMS.md 2(g) says, TRL sees exactly the task's ids, the metrics are exact."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.distance import jensenshannon
from transformers.modeling_outputs import CausalLMOutputWithPast

from tests.conftest import cpu_args
from trl_likelihood import MixCEConfig, MixCETrainer
from trl_likelihood.lab import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    BigramOracle,
    BigramTask,
    bigram_metrics,
    prefix_metrics,
    sample_model,
    tiny_causal_lm,
)


@pytest.fixture(scope="module")
def task() -> BigramTask:
    return BigramTask(vocab_size=12, max_len=8, seed=3)


class UniformLM(torch.nn.Module):
    """Equal logits over the whole vocabulary: every metric has a closed form."""

    def __init__(self, num_ids: int) -> None:
        super().__init__()
        self.num_ids = num_ids

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        return CausalLMOutputWithPast(logits=torch.zeros(*input_ids.shape, self.num_ids))


def test_rows_are_distributions_over_emittable_ids(task):
    table = task.transition
    rows = table[task.context_ids]
    torch.testing.assert_close(rows.sum(-1), torch.ones(len(rows), dtype=torch.float64), rtol=0, atol=1e-12)
    assert (table >= 0).all()
    assert table[:, [PAD_ID, BOS_ID]].abs().sum() == 0  # never emitted
    assert table[[PAD_ID, EOS_ID]].abs().sum() == 0  # never a context
    assert table[BOS_ID, EOS_ID] == 0  # no empty sequence
    assert (table[EOS_ID + 1 :, EOS_ID] > 0).all()  # EOS is never zeroed, so every prefix can end


def test_half_the_non_eos_entries_are_zero():
    task = BigramTask(vocab_size=64, max_len=32, seed=0)  # 63 x 62 Bernoulli(0.5) draws: std of the share is 0.008
    share = (task.transition[EOS_ID + 1 :, EOS_ID + 1 :] == 0).double().mean().item()
    assert abs(share - 0.5) < 0.04
    assert (BigramTask(vocab_size=64, sparsity=0.0).transition[EOS_ID + 1 :, EOS_ID:] > 0).all()


def test_seed_fixes_table_and_samples():
    a, b, c = BigramTask(seed=1), BigramTask(seed=1), BigramTask(seed=2)
    assert torch.equal(a.transition, b.transition) and not torch.equal(a.transition, c.transition)
    assert torch.equal(a.sample(50, seed=7), b.sample(50, seed=7))
    assert not torch.equal(a.sample(50, seed=7), a.sample(50, seed=8))
    assert a.dataset(20, seed=7)["text"] == b.dataset(20, seed=7)["text"]


@pytest.mark.parametrize("kwargs", [dict(vocab_size=2), dict(max_len=1), dict(sparsity=1.0)])
def test_bad_arguments_name_the_field(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BigramTask(**kwargs)


def test_samples_follow_the_table_and_end_by_max_len(task):
    ids = task.sample(4000, seed=0)
    assert (ids[:, 0] == BOS_ID).all()
    lengths = (ids[:, 1:] != PAD_ID).sum(1)
    ends = ids[torch.arange(len(ids)), lengths]
    assert (ends == EOS_ID).all() and lengths.max() == task.max_len  # the cap is hit, and EOS is forced there
    log_p, num_tokens = task.log_prob(ids)
    assert torch.isfinite(log_p).all() and torch.equal(num_tokens, lengths)
    first = torch.bincount(ids[:, 1], minlength=task.num_ids).double() / len(ids)  # 4000 draws: std <= 0.008
    torch.testing.assert_close(first, task.transition[BOS_ID], rtol=0, atol=0.035)


def test_log_prob_by_hand(task):
    p, normal = task.transition, slice(EOS_ID + 1, None)
    a = int(torch.nonzero(p[BOS_ID, normal])[0]) + EOS_ID + 1  # a possible first token
    b = int(torch.nonzero(p[a, normal])[0]) + EOS_ID + 1  # a possible successor of a
    zero = int(torch.nonzero(p[a, normal] == 0)[0]) + EOS_ID + 1  # an impossible one
    seqs = torch.tensor(
        [
            [BOS_ID, a, b, EOS_ID, PAD_ID, a],  # valid; anything after the EOS is ignored
            [BOS_ID, a, zero, EOS_ID, PAD_ID, PAD_ID],  # impossible transition
            [BOS_ID, a, PAD_ID, EOS_ID, PAD_ID, PAD_ID],  # emits padding
        ]
    )
    log_p, num_tokens = task.log_prob(seqs)
    expected = math.log(p[BOS_ID, a]) + math.log(p[a, b]) + math.log(p[b, EOS_ID])
    assert log_p[0].item() == pytest.approx(expected, rel=1e-12) and num_tokens[0] == 3
    assert log_p[1:].tolist() == [-math.inf, -math.inf]
    no_eos = torch.full((1, task.max_len + 1), a)  # a -> a may be possible, but EOS is forced at max_len
    no_eos[0, 0] = BOS_ID
    assert task.log_prob(no_eos)[0].item() == -math.inf


def test_tokenizer_is_one_symbol_one_id(task):
    tok = task.tokenizer()
    assert len(tok) == task.num_ids and tok.convert_ids_to_tokens(list(range(task.num_ids))) == task.symbols
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    ids = task.sample(30, seed=1)
    for row, text in zip(ids, task.texts(ids)):
        expected = row[row != PAD_ID].tolist()
        assert tok(text + tok.eos_token)["input_ids"] == expected  # what SFTTrainer does to a `text`
        assert tok.decode(expected, skip_special_tokens=True) == text
    with pytest.raises(Exception, match="UNK"):  # a symbol outside the task is an error, never a silent id
        tok("t0 banana")


def test_trl_trains_on_exactly_the_task_sequences(task, tmp_path):
    ids = task.sample(16, seed=4)
    tok = task.tokenizer()
    dataset = task.dataset(16, seed=4)
    args = MixCEConfig(str(tmp_path), eta=1.0, **cpu_args(max_length=task.max_len + 1))
    trainer = MixCETrainer(tiny_causal_lm(tok), args=args, train_dataset=dataset, processing_class=tok)
    for row, example in zip(ids, trainer.train_dataset):
        assert example["input_ids"] == row[row != PAD_ID].tolist()
    batch = next(iter(trainer.get_train_dataloader()))
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()  # the final EOS is a target


def test_tiny_causal_lm_is_seeded_and_rank_limited():
    tok = BigramTask().tokenizer()  # the default task (24 symbols) and the default width
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = tiny_causal_lm(tok, seed=5), tiny_causal_lm(tok, seed=5)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.vocab_size == len(tok) and a.config.hidden_size < len(tok)
    assert a.config.eos_token_id == EOS_ID and a.config.pad_token_id == PAD_ID


def test_oracle_scores_perfectly(task):
    metrics = bigram_metrics(BigramOracle(task), task, num_sequences=500, num_samples=500, seed=11)
    assert metrics["js"] < 1e-12 and metrics["zero_mass"] == 0.0 and metrics["invalid_rate"] == 0.0
    log_p, num_tokens = task.log_prob(task.sample(500, seed=11))  # the same held-out sequences
    assert metrics["nll"] == pytest.approx((-log_p.sum() / num_tokens.sum()).item(), rel=1e-9)
    assert metrics["num_prefixes"] == num_tokens.sum()


def test_uniform_model_matches_closed_forms(task):
    uniform = UniformLM(task.num_ids)
    ids = task.sample(300, seed=2)
    metrics = prefix_metrics(uniform, ids, task, batch_size=64)
    gold = task.next_token_probs(ids[:, :-1])[ids[:, 1:] != PAD_ID].numpy()  # (num_prefixes, num_ids)
    u = torch.full((task.num_ids,), 1 / task.num_ids, dtype=torch.float64).numpy()
    assert metrics["zero_mass"] == pytest.approx(((gold == 0).sum(-1) / task.num_ids).mean(), rel=1e-9)
    assert metrics["js"] == pytest.approx((jensenshannon(gold, u[None], axis=-1) ** 2).mean(), rel=1e-9)
    assert metrics["nll"] == pytest.approx(math.log(task.num_ids), rel=1e-12)
    assert bigram_metrics(uniform, task, num_sequences=100, num_samples=500)["invalid_rate"] > 0.9


def test_cached_sampling_matches_full_forward(task):
    """``sample_model`` decodes with a KV cache; a plain loop that re-reads the whole prefix must draw the same."""
    model = tiny_causal_lm(task.tokenizer(), seed=1).eval()
    fast = sample_model(model, task, n=6, seed=9, batch_size=4)
    generator = torch.Generator().manual_seed(9)
    for rows in fast.split(4):
        ids = torch.full((len(rows), 1), BOS_ID)
        with torch.no_grad():
            for _ in range(task.max_len):
                probs = torch.softmax(model(input_ids=ids).logits[:, -1].double(), dim=-1)
                ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
                if (ids == EOS_ID).any(1).all():
                    break
        assert torch.equal(rows[:, : ids.shape[1]], ids)
