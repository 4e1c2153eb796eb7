"""likelihood_ratio_score: a naive full-logits check, the PEFT implicit reference, the zero control, and OOD detection
on lab data (a model fine-tuned on one bigram language tells its held-out sequences from another language's)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from trl_likelihood.lab import PAD_ID, BigramTask, tiny_causal_lm
from trl_likelihood.metrics import binary_auroc
from trl_likelihood.scoring import likelihood_ratio_score, sequence_log_likelihood

IN_TASK = BigramTask(vocab_size=16, max_len=12, seed=0)
OUT_TASK = BigramTask(vocab_size=16, max_len=12, seed=1)  # same symbols and tokenizer, another table


def _rows(ids: torch.Tensor) -> list[list[int]]:
    """Token lists up to and including EOS (padding dropped)."""
    return [[t for t in row if t != PAD_ID] for row in ids.tolist()]


def _naive_log_p(model, rows: list[list[int]]) -> torch.Tensor:
    """Sum of log p(x_t | x_<t) over t >= 1 from the ordinary forward, float64, one sequence at a time."""
    out = []
    for row in rows:
        logq = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0, :-1].double(), -1)
        out.append(logq.gather(-1, torch.tensor(row[1:])[:, None]).sum())
    return torch.stack(out)


def _fine_tune(model, task: BigramTask, steps: int = 60, seed: int = 10):
    """Plain MLE on ``task``'s sequences: the fine-tuning whose data the score should recognise."""
    data = task.sample(steps * 32, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for ids in data.split(32):
        labels = ids.masked_fill(ids == PAD_ID, -100)
        model(input_ids=ids, attention_mask=(ids != PAD_ID).long(), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def perturbed_pair():
    """A fresh lab model and a copy with perturbed weights (copied before any scoring patches either)."""
    reference = tiny_causal_lm(IN_TASK.tokenizer(), hidden_size=16, seed=0)
    model = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, reference


def test_matches_a_naive_log_ratio(perturbed_pair):
    model, reference = perturbed_pair
    rows = _rows(IN_TASK.sample(6, seed=3))  # different lengths, so batches are padded
    expected = _naive_log_p(model, rows) - _naive_log_p(reference, rows)
    score = likelihood_ratio_score(model, reference, rows, batch_size=4)
    torch.testing.assert_close(score, expected, rtol=0, atol=1e-5)  # fp32 token log-probs, ~12 tokens each
    per_token = likelihood_ratio_score(model, reference, rows, normalize=True)
    torch.testing.assert_close(per_token, expected / torch.tensor([len(r) - 1 for r in rows]), rtol=0, atol=1e-6)
    texts = IN_TASK.texts(IN_TASK.sample(6, seed=3))  # the same sequences as text: no EOS, <bos> from the tokenizer
    from_text = likelihood_ratio_score(model, reference, texts, IN_TASK.tokenizer())
    torch.testing.assert_close(
        from_text,
        _naive_log_p(model, [r[:-1] for r in rows]) - _naive_log_p(reference, [r[:-1] for r in rows]),
        rtol=0,
        atol=1e-5,
    )


def test_same_model_scores_exactly_zero(perturbed_pair):
    model, _ = perturbed_pair
    twin = copy.deepcopy(model)
    rows = _rows(OUT_TASK.sample(8, seed=4))
    assert torch.equal(likelihood_ratio_score(model, twin, rows), torch.zeros(8, dtype=torch.float64))
    log_p, counts = sequence_log_likelihood(model, rows)
    assert (log_p < 0).all() and counts.tolist() == [len(r) - 1 for r in rows]  # the zero is not a trivial one


def test_peft_reference_none_is_the_adapter_disabled():
    base = tiny_causal_lm(IN_TASK.tokenizer(), hidden_size=16, seed=0)
    reference = copy.deepcopy(base)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    rows = _rows(IN_TASK.sample(6, seed=5))
    implicit = likelihood_ratio_score(model, None, rows)
    assert implicit.abs().min() > 1e-3  # the random adapter changes every sequence's likelihood
    torch.testing.assert_close(implicit, likelihood_ratio_score(model, reference, rows), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs a PEFT model"):
        likelihood_ratio_score(reference, None, rows)


def test_separates_in_and_out_of_distribution_lab_sequences():
    base = tiny_causal_lm(IN_TASK.tokenizer(), hidden_size=32, seed=0)
    model = _fine_tune(copy.deepcopy(base), IN_TASK)
    in_rows, out_rows = _rows(IN_TASK.sample(200, seed=99)), _rows(OUT_TASK.sample(200, seed=99))
    labels = torch.tensor([True] * 200 + [False] * 200)
    for normalize in (False, True):
        score = likelihood_ratio_score(model, base, in_rows + out_rows, normalize=normalize)
        assert binary_auroc(score, labels) > 0.9  # measured: 0.993 (sum), 0.988 (per token)
    # the base alone is no detector: an untrained model does not prefer either language
    base_log_p, _ = sequence_log_likelihood(base, in_rows + out_rows)
    assert binary_auroc(base_log_p, labels) < 0.75
