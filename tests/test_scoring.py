"""ImplicitPRM scoring: step rewards sum to a naive full-logits log-ratio, offsets-based boundaries, aggregates, votes.

The naive check tokenises as TRL's SFTTrainer does and runs the models' ordinary forward (full logits, log_softmax in
float64), so it shares no code with ``ratio.token_logps``. Tolerances: the fused head computes each token's
log-softmax in fp32 chunks, so a sum over ~20 tokens of O(1) values differs from the float64 one by ~1e-6 at most.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from tests.conftest import cpu_args
from trl_likelihood.scoring import AGGREGATES, ImplicitPRM, aggregate_steps

PROMPT = "the cat runs over the dog."
STEPS = [" red dog.", "a model learns text", "from data and writes new words."]
# A fused fp32 log-prob of this model (|log p| ~ 6 over 300 tokens) is within ~5e-7 (one fp32 ulp) of the float64
# one; a log-ratio of two is within 1e-6, and a sum over n tokens within n * 1e-6, times beta. An off-by-one token or
# a lost EOS moves a reward by > 1e-2.
TOKEN_TOL = 1e-6
ATOL = 2e-6  # batched vs unbatched: the same kernel on padded shapes, measured < 5e-7 here


def _tol(beta: float, n_tokens: int) -> float:
    return beta * TOKEN_TOL * n_tokens


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir):
    """The tiny model with perturbed weights, so the log-ratio to the saved model is non-zero."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def prm(tiny_model_dir, reference_model):
    return ImplicitPRM(tiny_model_dir, reference=reference_model, beta=0.5)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter whose B matrices are random (not the zero init), saved without a tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    out = str(tmp_path_factory.mktemp("lora"))
    peft_model.save_pretrained(out)
    return out


def _naive_token_logratios(policy, reference, tokenizer, prompt: str, completion: str) -> torch.Tensor:
    """Float64 ``log pi - log pi_ref`` of each completion token, tokenised as SFT: ``tok(prompt + completion)``."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids  # the test strings end the prompt on a token boundary
    ids = torch.tensor([full])

    def logps(model) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].double()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1 :]

    return logps(policy) - logps(reference)


def _check_invariant(result, expected_token_logratios: torch.Tensor, beta: float) -> None:
    expected = beta * expected_token_logratios.sum().item()
    assert abs(expected) > 1e-2  # the models differ, so a zero reward could not pass by accident
    tol = _tol(beta, len(expected_token_logratios))
    assert math.fsum(result.step_rewards) == pytest.approx(expected, rel=0, abs=tol)
    assert result.outcome_reward == pytest.approx(expected, rel=0, abs=tol)
    assert sum(result.num_tokens) == len(expected_token_logratios)
    torch.testing.assert_close(torch.tensor(result.q_values), torch.tensor(result.step_rewards).cumsum(0))


@pytest.mark.parametrize("add_eos", [True, False])
def test_step_rewards_sum_to_outcome_reward(tiny_model_dir, reference_model, tokenizer, add_eos):
    prm = ImplicitPRM(tiny_model_dir, reference=reference_model, beta=0.5, add_eos=add_eos)
    result = prm.score(PROMPT, STEPS)
    completion = "\n\n".join(STEPS) + (tokenizer.eos_token if add_eos else "")
    naive = _naive_token_logratios(prm.policy, reference_model, tokenizer, PROMPT, completion)
    _check_invariant(result, naive, beta=0.5)
    # the separator after a step is that step's; the EOS is the last step's
    first = tokenizer(PROMPT + STEPS[0] + "\n\n")["input_ids"]
    assert result.num_tokens[0] == len(first) - len(tokenizer(PROMPT)["input_ids"])
    n = result.num_tokens[0]
    assert result.step_rewards[0] == pytest.approx(0.5 * naive[:n].sum().item(), rel=0, abs=_tol(0.5, n))


def test_adapter_with_base_reference(adapter_dir, tiny_model_dir, tokenizer):
    prm = ImplicitPRM.from_pretrained(adapter_dir, reference="base", beta=0.5)
    # one model in memory: the reference is the policy object itself, run with its adapter disabled
    assert prm.reference is prm.policy and prm.reference_is_base
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = sum(p.numel() for n, p in prm.policy.named_parameters() if "lora_" in n)
    assert lora > 0
    assert sum(p.numel() for p in prm.policy.parameters()) == sum(p.numel() for p in base.parameters()) + lora
    assert sum(type(m).__name__ == "Qwen2ForCausalLM" for m in prm.policy.modules()) == 1
    result = prm.score(PROMPT, STEPS)
    naive = _naive_token_logratios(prm.policy, base, tokenizer, PROMPT, "\n\n".join(STEPS) + tokenizer.eos_token)
    _check_invariant(result, naive, beta=0.5)
    assert prm.score(PROMPT, STEPS).step_rewards == result.step_rewards  # the adapter is back on after scoring


def test_reference_identical_to_policy_gives_zero(tiny_model_dir):
    prm = ImplicitPRM(tiny_model_dir, reference=tiny_model_dir, beta=0.5)
    assert prm.reference is not prm.policy
    result = prm.score(PROMPT, STEPS)
    assert result.step_rewards == [0.0] * len(STEPS) and result.q_values == [0.0] * len(STEPS)
    assert result.outcome_reward == 0.0 and result.score == 0.0


def test_boundary_inside_a_merged_token(prm, tokenizer):
    """Cut the response inside a multi-character token: prefixes re-tokenise differently, offsets do not."""
    response = "the model writes small words."
    prompt_len = len(tokenizer(PROMPT)["input_ids"])
    encoded = tokenizer(PROMPT + response + tokenizer.eos_token, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    # the first response token of >= 2 characters, and a cut between its characters
    merged = next(i for i in range(prompt_len, len(ids) - 1) if offsets[i][1] - offsets[i][0] >= 2)
    cut = offsets[merged][0] + 1 - len(PROMPT)
    steps = [response[:cut], response[cut:]]
    prm.step_separator = ""
    try:
        result = prm.score(PROMPT, steps)
    finally:
        prm.step_separator = "\n\n"
    # the merged token ends in step 2, so it is step 2's; every response token is counted once
    assert result.num_tokens == [merged - prompt_len, len(ids) - merged]
    prefix_tokens = len(tokenizer(PROMPT + steps[0])["input_ids"]) - prompt_len
    assert prefix_tokens != result.num_tokens[0]  # what re-tokenising the prefix would have said
    naive = _naive_token_logratios(prm.policy, prm.reference, tokenizer, PROMPT, response + tokenizer.eos_token)
    _check_invariant(result, naive, beta=0.5)
    n = merged - prompt_len
    assert result.step_rewards[0] == pytest.approx(0.5 * naive[:n].sum().item(), rel=0, abs=_tol(0.5, n))


def test_separator_merging_into_next_step(prm, tokenizer):
    """With ``" "`` as separator, BPE glues it to the next word (" dog"): that token is the next step's."""
    prm.step_separator = " "
    try:
        result = prm.score(PROMPT, ["red", "dog", "runs."])
    finally:
        prm.step_separator = "\n\n"
    tokens = [tokenizer.decode([i]) for i in tokenizer(PROMPT + "red dog runs.")["input_ids"]]
    assert " d" in tokens or " dog" in tokens  # the separator does merge with this tokenizer
    n_red = len(tokenizer(PROMPT + "red")["input_ids"]) - len(tokenizer(PROMPT)["input_ids"])
    n_response = len(tokenizer(PROMPT + "red dog runs." + tokenizer.eos_token)["input_ids"]) - len(
        tokenizer(PROMPT)["input_ids"]
    )
    assert result.num_tokens[0] == n_red and sum(result.num_tokens) == n_response


def test_tokenisation_matches_sft_trainer(tiny_model_dir, prm, tokenizer, tmp_path):
    """Our tokens and completion start equal SFTTrainer's preprocessing: plain text, a prompt whose last token merges
    with the completion (the completion then starts where the token lists diverge), and conversational."""
    messages = [{"role": "user", "content": PROMPT}]
    merging = ("the ca", ["t runs.", "a dog."])  # "ca" + "t": the prompt's "a" becomes "at" in the full text
    prompt_ids = tokenizer(merging[0])["input_ids"]
    assert tokenizer(merging[0] + "t runs.")["input_ids"][: len(prompt_ids)] != prompt_ids
    standard = Dataset.from_dict(
        {"prompt": [PROMPT, merging[0]], "completion": ["\n\n".join(STEPS), "\n\n".join(merging[1])]}
    )
    chat = Dataset.from_dict(
        {"prompt": [messages], "completion": [[{"role": "assistant", "content": "\n\n".join(STEPS)}]]}
    )
    args = SFTConfig(str(tmp_path), **cpu_args(max_length=None))  # no truncation
    sft = SFTTrainer(model=tiny_model_dir, args=args, train_dataset=standard, eval_dataset={"chat": chat})
    cases = [(PROMPT, STEPS, sft.train_dataset[0]), (*merging, sft.train_dataset[1])]
    for prompt, steps, row in [*cases, (messages, STEPS, sft.eval_dataset["chat"][0])]:
        encoded = prm._encode(prompt, steps)
        assert encoded.input_ids == row["input_ids"]
        assert encoded.prompt_len == next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert len(encoded.token_step) == len(row["input_ids"]) - encoded.prompt_len
    assert prm._encode(*merging).prompt_len < len(prompt_ids)
    result = prm.score(messages, STEPS)
    full = sft.eval_dataset["chat"][0]
    start = next(i for i, label in enumerate(full["labels"]) if label != -100)
    ids = torch.tensor([full["input_ids"]])
    with torch.no_grad():
        lp = [torch.log_softmax(m(input_ids=ids).logits[0, :-1].double(), -1) for m in (prm.policy, prm.reference)]
    naive = (lp[0] - lp[1]).gather(-1, ids[0, 1:, None])[:, 0][start - 1 :]
    _check_invariant(result, naive, beta=0.5)
    assert prm.tokenizer.decode(full["input_ids"][-1]) == "<|im_end|>"  # the template's closing token, in step 3
    prm.add_eos = False
    try:
        without = prm.score(messages, STEPS)
    finally:
        prm.add_eos = True
    assert without.num_tokens == [*result.num_tokens[:-1], result.num_tokens[-1] - 1]
    expected = 0.5 * naive[:-1].sum().item()
    assert without.outcome_reward == pytest.approx(expected, rel=0, abs=_tol(0.5, len(naive)))


def test_aggregates_by_hand(prm):
    r, q = [0.5, -1.0, 0.25], [0.5, -0.5, -0.25]
    assert [aggregate_steps(r, q, a) for a in AGGREGATES] == [-1.0, -0.25, -0.25, -0.5]  # min, sum, last, min_q
    results = {a: prm.score(PROMPT, STEPS, aggregate=a) for a in AGGREGATES}
    steps, qs = results["min"].step_rewards, results["min"].q_values
    assert len(set(steps)) == 3  # distinct steps, so min and last cannot agree by accident
    assert results["min"].score == min(steps) and results["min_q"].score == min(qs)
    assert results["sum"].score == pytest.approx(sum(steps), rel=1e-12) and results["last"].score == qs[-1]
    assert (
        ImplicitPRM(prm.policy, prm.reference, prm.tokenizer, beta=0.5, aggregate="last").score(PROMPT, STEPS).score
        == qs[-1]
    )
    assert prm.score(PROMPT, STEPS).aggregate == "min"  # the constructor default
    with pytest.raises(ValueError, match="aggregate"):
        prm.score(PROMPT, STEPS, aggregate="max")


CANDIDATES = [
    ["red dog.", "a cat runs."],
    ["the model learns text from data."],
    ["blue green small.", "large slow cat.", "the end."],
    ["a reward policy.", "reference step answer question."],
    ["dog runs fast over the cat."],
]


def test_batch_equals_one_by_one(prm):
    """Right padding and batches of 2 (so three forwards, some padded) give each response's unbatched scores."""
    prompts = [PROMPT, [{"role": "user", "content": "the dog"}], "a", PROMPT, "small red"]
    prm.batch_size = 2
    try:
        batched = prm.score(prompts, CANDIDATES)
    finally:
        prm.batch_size = 8
    for prompt, candidate, result in zip(prompts, CANDIDATES, batched):
        alone = prm.score(prompt, candidate)
        assert result.num_tokens == alone.num_tokens
        # padded batches change matmul shapes, so fp32 sums may differ in the last bits
        torch.testing.assert_close(
            torch.tensor(result.step_rewards), torch.tensor(alone.step_rewards), atol=ATOL, rtol=0
        )


def test_best_of_n_picks_argmax(prm):
    singles = [prm.score(PROMPT, c, aggregate="sum").score for c in CANDIDATES]
    assert len(set(singles)) == len(singles)
    best, scores = prm.best_of_n(PROMPT, CANDIDATES, aggregate="sum")
    assert scores == pytest.approx(singles, abs=ATOL)
    assert best == max(range(len(singles)), key=singles.__getitem__)
    best_min, scores_min = prm.best_of_n(PROMPT, CANDIDATES)  # default "min"
    assert scores_min == pytest.approx([prm.score(PROMPT, c).score for c in CANDIDATES], abs=ATOL)
    assert best_min == max(range(len(scores_min)), key=scores_min.__getitem__)


def test_weighted_majority_vote_by_hand(prm):
    answers = ["7", "3", "7", "3", "5"]
    _, scores = prm.best_of_n(PROMPT, CANDIDATES)
    sig = [1 / (1 + math.exp(-s)) for s in scores]
    expected = {"7": sig[0] + sig[2], "3": sig[1] + sig[3], "5": sig[4]}
    winner, weights = prm.weighted_majority_vote(PROMPT, CANDIDATES, answers)
    assert weights == pytest.approx(expected, rel=1e-12)
    assert winner == max(expected, key=expected.__getitem__)
    with pytest.raises(ValueError, match="answers"):
        prm.weighted_majority_vote(PROMPT, CANDIDATES, answers[:-1])


@pytest.mark.parametrize("steps", [[], [[]], [["a"], []], [["a"], "b"]])
def test_empty_or_malformed_steps_raise(prm, steps):
    with pytest.raises(ValueError, match="steps"):
        prm.score(PROMPT, steps)


def test_construction_errors(tiny_model_dir, prm):
    with pytest.raises(ValueError, match="PEFT adapter"):
        ImplicitPRM(prm.policy, reference="base", tokenizer=prm.tokenizer)

    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        ImplicitPRM(prm.policy, prm.reference, tokenizer=SlowTokenizer())
    with pytest.raises(ValueError, match="prompts"):
        prm.score([PROMPT, PROMPT], [STEPS])


def test_chat_template_that_rewrites_the_response_raises(prm, tokenizer):
    """A template that trims the content would score other text than the steps: refuse rather than guess."""
    trimming = copy.deepcopy(tokenizer)
    trimming.chat_template = tokenizer.chat_template.replace("message['content'] }}", "message['content'] | trim }}")
    scorer = ImplicitPRM(prm.policy, prm.reference, tokenizer=trimming, beta=0.5)
    messages = [{"role": "user", "content": PROMPT}]
    assert scorer.score(messages, ["red dog.", "ok"]).num_tokens[0] > 0  # nothing to trim: scored
    with pytest.raises(ValueError, match="verbatim"):
        scorer.score(messages, STEPS)  # STEPS[0] starts with a space


@pytest.mark.parametrize("rows_per_chunk", ["all", "one", "none"])
def test_cpu_scoring_route_equals_the_fused_head(tiny_model_dir, adapter_dir, monkeypatch, rows_per_chunk):
    """On CPU ``scoring_token_logps`` reads the model's own logits from the first scored position on, in row chunks
    (or, when one row's logits exceed the budget, uses the fused head); it must give the fused head's log-probs on
    right-padded rows whose prompts end at different places, with the adapter on and disabled."""
    from trl_likelihood import ratio

    vocab = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    budget = {"all": ratio.SCORING_LOGITS_PER_CHUNK, "one": 13 * vocab, "none": 13 * vocab - 1}[rows_per_chunk]
    monkeypatch.setattr(ratio, "SCORING_LOGITS_PER_CHUNK", budget)  # the longest row keeps 13 positions' logits
    lengths, prompt_ends = [9, 14, 5], [4, 2, 3]
    torch.manual_seed(0)
    input_ids = torch.zeros(3, max(lengths), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, (n, p) in enumerate(zip(lengths, prompt_ends)):
        input_ids[row, :n] = torch.randint(3, 200, (n,))
        attention_mask[row, :n] = 1
        labels[row, p:n] = input_ids[row, p:n]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = ImplicitPRM.from_pretrained(adapter_dir, reference="base").policy
    for target in (model, peft_model):
        ratio.ensure_fused_head(target)
    got = [(ratio.scoring_token_logps(m, batch), ratio.token_logps(m, batch)) for m in (model, peft_model)]
    with ratio.adapter_disabled(peft_model) as base:
        got.append((ratio.scoring_token_logps(base, batch), ratio.token_logps(base, batch)))
    for fast, fused in got:
        assert (fast.outputs is None) == (rows_per_chunk != "none") and fused.outputs is not None  # which head
        assert torch.equal(fast.mask, fused.mask) and fast.mask.sum() == sum(lengths) - sum(prompt_ends)
        assert (fast.logps[~fast.mask] == 0).all() and (fast.logps[fast.mask] < 0).all()
        torch.testing.assert_close(fast.logps, fused.logps, rtol=0, atol=TOKEN_TOL)
    assert not torch.allclose(got[1][0].logps, got[2][0].logps)  # the adapter changes them: it was really on
