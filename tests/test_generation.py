"""sample_completions: seeded reproducibility, masks, prompts kept, left padding invariance, PEFT reference."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_likelihood.generation import sample_completions, sampling_seed
from trl_likelihood.ratio import adapter_disabled


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _sample(model, tok, prompts, seed=0, **kw):
    kw.setdefault("max_new_tokens", 12)
    kw.setdefault("eos_token_id", tok.eos_token_id)
    return sample_completions(model, prompts, pad_token_id=tok.pad_token_id, seed=seed, **kw)


def test_sampling_is_reproducible_and_depends_on_the_seed(model_and_tok):
    model, tok = model_and_tok
    prompts = [tok("the cat")["input_ids"], tok("a dog runs fast")["input_ids"]] * 3
    a, b, c = _sample(model, tok, prompts, 1), _sample(model, tok, prompts, 1), _sample(model, tok, prompts, 2)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert sampling_seed(0, 5, 1) == sampling_seed(0, 5, 1) != sampling_seed(0, 5, 0) != sampling_seed(0, 6, 1)


def test_masks_prompts_and_eos(model_and_tok):
    model, tok = model_and_tok
    prompts = [tok("the cat")["input_ids"], tok("a dog runs fast over the")["input_ids"], [tok.eos_token_id]]
    stops = list(range(60))  # several EOS ids, so that the untrained model stops early on some rows (~1 in 5 tokens)
    out = _sample(model, tok, prompts * 4, seed=3, max_new_tokens=6, eos_token_id=stops)
    width = max(len(p) for p in prompts)
    assert out.prompt_length == width and out.input_ids.shape == out.completion_mask.shape == out.attention_mask.shape
    saw_eos = saw_full = False
    for (prompt, completion), ids, comp, att in zip(
        out.rows(), out.input_ids, out.completion_mask, out.attention_mask
    ):
        assert prompt in prompts  # prompts preserved, padding stripped
        assert ids[width - len(prompt) : width].tolist() == prompt and not comp[:width].any()
        assert 1 <= len(completion) <= 6
        stopped = [i for i, t in enumerate(completion) if t in stops]
        if stopped:
            saw_eos = True
            assert stopped == [len(completion) - 1]  # EOS kept, nothing after it
        else:
            saw_full = True
            assert len(completion) == out.input_ids.size(1) - width
        tail = ids[width + len(completion) :]
        assert (tail == tok.pad_token_id).all() and not comp[width + len(completion) :].any()
        assert att.sum().item() == len(prompt) + len(completion)
    assert saw_eos and saw_full  # rows that stop and rows that run to max_new_tokens


def test_left_padding_does_not_change_the_distribution(model_and_tok):
    """Greedy (top-k 1): each padded row continues exactly like the row alone (positions count from its start)."""
    model, tok = model_and_tok
    prompts = [tok("the cat")["input_ids"], tok("a dog runs fast over the red")["input_ids"]]
    batch = _sample(model, tok, prompts, top_k=1, max_new_tokens=8).rows()
    for prompt, row in zip(prompts, batch):
        alone = _sample(model, tok, [prompt], top_k=1, max_new_tokens=8).rows()[0]
        assert row[1] == alone[1]


def test_top_k_one_is_greedy(model_and_tok):
    model, tok = model_and_tok
    prompt = tok("the model learns")["input_ids"]
    out = _sample(model, tok, [prompt], top_k=1, max_new_tokens=5, eos_token_id=None)
    greedy = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert out.input_ids[0].tolist() == greedy[0].tolist()


def test_peft_adapter_disabled_samples_the_base(tiny_model_dir, model_and_tok):
    base, tok = model_and_tok
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    torch.manual_seed(0)
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 2.0)
    prompts = [[tok.eos_token_id]] * 6  # unconditional: from the start token
    with adapter_disabled(peft) as ref:
        as_ref = _sample(ref, tok, prompts, seed=4)
    assert torch.equal(as_ref.input_ids, _sample(base, tok, prompts, seed=4).input_ids)
    assert not torch.equal(_sample(peft, tok, prompts, seed=4).input_ids, as_ref.input_ids)  # the adapter is back


def test_bad_arguments(model_and_tok):
    model, tok = model_and_tok
    with pytest.raises(ValueError, match="max_new_tokens"):
        _sample(model, tok, [[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        _sample(model, tok, [[1]], temperature=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        _sample(model, tok, [[]])
