"""sample_with_backspace: the batched, cached sampler equals an uncached per-row loop; prompts kept, prefixes, EOS.

The model is a tiny random Qwen2 whose output layer gets a bias, so that ``<bkspc>`` (and EOS) are sampled as often as
a test needs. The reference loop recomputes the full forward on each row's alive tokens at every step, with no cache
and no padding, and draws with the same ``torch.multinomial`` over ``(B, V)`` from the same seed, so the two must take
identical actions.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from trl_likelihood.backspace import Trajectory, apply_backspaces
from trl_likelihood.generation import BackspaceSamples, sample_with_backspace

PAD, EOS, VOCAB = 0, 1, 64
BK = VOCAB - 1
PROMPTS = [[2], [3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18, 19], [20, 21, 22, 23]]
PREFIXES = [[], [30, 31], [], [32, 33, 34], [35], []]


def tiny_model(bkspc_bias: float, eos_bias: float = 0.0, seed: int = 0) -> Qwen2ForCausalLM:
    """A random 2-layer Qwen2 whose logits of ``<bkspc>`` and EOS are raised by the given biases (PAD's lowered)."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # logits that vary by about 1 nat with the context (0.02 gives near-uniform ones)
        tie_word_embeddings=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    bias = torch.zeros(VOCAB)
    bias[BK], bias[EOS], bias[PAD] = bkspc_bias, eos_bias, -1e4  # PAD is never sampled: it marks nothing-taken
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


@torch.no_grad()
def reference(model, prompts, prefixes, max_new_tokens, *, seed, temperature=1.0, top_k=0) -> BackspaceSamples:
    """Step by step, no cache: each live row's state is run alone; one multinomial over (B, V) per step."""
    generator = torch.Generator().manual_seed(seed)
    completions = [list(q) for q in prefixes]
    actions: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        rows = []
        for prompt, completion, stop in zip(prompts, completions, done):
            logits = torch.zeros(VOCAB) if stop else model(torch.tensor([prompt + completion])).logits[0, -1].float()
            if not completion:
                logits[BK] = float("-inf")
            logits = logits / temperature
            if top_k:
                logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
            rows.append(logits)
        picks = torch.multinomial(torch.stack(rows).softmax(-1), 1, generator=generator)[:, 0].tolist()
        for b, action in enumerate(picks):
            if done[b]:
                continue
            actions[b].append(action)
            if action == BK:
                completions[b].pop()
            else:
                completions[b].append(action)
            done[b] = action == EOS
        if all(done):
            break
    return BackspaceSamples([list(p) for p in prompts], [list(q) for q in prefixes], actions, completions, done)


def sample(model, prompts, max_new_tokens, **kw) -> BackspaceSamples:
    kw.setdefault("eos_token_id", EOS)
    return sample_with_backspace(model, prompts, max_new_tokens, bkspc_token_id=BK, pad_token_id=PAD, **kw)


def double_backspaces(actions: list[int]) -> int:
    return sum(a == b == BK for a, b in zip(actions, actions[1:]))


@pytest.mark.parametrize(("seed", "temperature", "top_k"), [(0, 1.0, 0), (1, 1.0, 0), (2, 0.8, 20)])
def test_batched_cached_sampler_equals_the_uncached_reference(seed, temperature, top_k):
    model = tiny_model(bkspc_bias=3.5, eos_bias=1.0)  # about 1 action in 4 is a backspace
    kw = dict(seed=seed, temperature=temperature, top_k=top_k)
    got = sample(model, PROMPTS, 24, prefixes=PREFIXES, **kw)
    want = reference(model, PROMPTS, PREFIXES, 24, **kw)
    assert got.actions == want.actions
    assert got.completions == want.completions and got.finished == want.finished
    assert got.prompts == PROMPTS and got.prefixes == PREFIXES
    # The comparison exercised what it is about: many backspaces, consecutive ones, rows that stop and rows that run.
    assert sum(a.count(BK) for a in got.actions) >= 20
    assert sum(double_backspaces(a) for a in got.actions) >= 3
    assert any(got.finished) and not all(got.finished)


def test_completions_eos_and_lengths():
    model = tiny_model(bkspc_bias=3.5, eos_bias=1.0)
    out = sample(model, PROMPTS * 2, 24, prefixes=PREFIXES * 2, seed=5)
    for prefix, actions, completion, finished in zip(out.prefixes, out.actions, out.completions, out.finished):
        assert completion == apply_backspaces(prefix + actions, BK)
        assert BK not in completion and PAD not in actions
        if finished:  # EOS stops the row and is kept, last, in the actions and the completion
            assert actions.index(EOS) == len(actions) - 1 and completion[-1] == EOS and len(actions) <= 24
        else:
            assert EOS not in actions and len(actions) == 24
    assert any(out.finished) and not all(out.finished)


def test_prompt_is_never_deleted_even_when_backspace_is_preferred():
    """With ``<bkspc>`` almost certain, every row deletes its whole prefix first, then alternates append, delete."""
    model = tiny_model(bkspc_bias=40.0)
    out = sample(model, PROMPTS, 12, prefixes=PREFIXES, seed=0, eos_token_id=None)
    for prefix, actions, completion in zip(out.prefixes, out.actions, out.completions):
        head, tail = actions[: len(prefix)], actions[len(prefix) :]
        assert head == [BK] * len(prefix)  # the prefix is deletable
        assert tail[1::2] == [BK] * len(tail[1::2]) and BK not in tail[::2]  # never a backspace at an empty completion
        assert completion == ([] if len(tail) % 2 == 0 else [tail[-1]])


def test_prefix_conditions_like_a_prompt_when_there_are_no_backspaces():
    """Without backspaces (bias -40), a prefix is sampled from exactly like the same tokens appended to the prompt."""
    model = tiny_model(bkspc_bias=-40.0, eos_bias=1.0)
    with_prefix = sample(model, PROMPTS, 10, prefixes=PREFIXES, seed=3)
    in_prompt = sample(model, [p + q for p, q in zip(PROMPTS, PREFIXES)], 10, seed=3)
    assert with_prefix.actions == in_prompt.actions and not any(BK in a for a in with_prefix.actions)
    assert with_prefix.completions == [q + c for q, c in zip(PREFIXES, in_prompt.completions)]
    other = sample(model, PROMPTS, 10, prefixes=[[40, 41]] * len(PROMPTS), seed=3)
    assert other.actions != with_prefix.actions  # the prefix is seen by the model


def test_padding_does_not_change_a_row():
    """Greedy (top-k 1): a short row alone continues exactly like in a batch with longer prompts and prefixes."""
    model = tiny_model(bkspc_bias=2.4)
    batch = sample(model, PROMPTS, 16, prefixes=PREFIXES, top_k=1, eos_token_id=None)
    assert sum(BK in a for a in batch.actions) >= 3  # greedy backspaces occur, so rolled-back states are compared
    for b in range(len(PROMPTS)):
        alone = sample(model, [PROMPTS[b]], 16, prefixes=[PREFIXES[b]], top_k=1, eos_token_id=None)
        assert alone.actions[0] == batch.actions[b] and alone.completions[0] == batch.completions[b]


def test_seeded_like_sample_completions():
    model = tiny_model(bkspc_bias=3.0, eos_bias=1.0)
    a, b, c = (sample(model, PROMPTS, 10, seed=s) for s in (7, 7, 8))
    assert a.actions == b.actions != c.actions
    from_generator = sample(model, PROMPTS, 10, generator=torch.Generator().manual_seed(7))
    assert from_generator.actions == a.actions
    state = torch.get_rng_state()
    sample(model, PROMPTS, 4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_trajectories():
    model = tiny_model(bkspc_bias=3.5, eos_bias=1.0)
    out = sample(model, PROMPTS, 12, prefixes=PREFIXES, seed=2)
    trajectories = out.trajectories()
    assert len(trajectories) == len(PROMPTS) and all(isinstance(t, Trajectory) for t in trajectories)
    for t, prompt, prefix, actions, completion in zip(
        trajectories, out.prompts, out.prefixes, out.actions, out.completions
    ):
        assert t.prompt == prompt and t.stream == prefix + actions
        assert t.is_action == [False] * len(prefix) + [True] * len(actions)  # the forced prefix is no decision
        assert t.actions == actions and t.completion(BK) == completion


def test_training_mode_is_restored_and_tensor_prompts():
    model = tiny_model(bkspc_bias=3.0).train()
    out = sample(model, torch.tensor([[2, 3], [4, 5]]), 5, seed=0)
    assert model.training and out.prompts == [[2, 3], [4, 5]]


def test_bad_arguments():
    model = tiny_model(bkspc_bias=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, [[2]], 0)
    with pytest.raises(ValueError, match="prefixes"):
        sample(model, [[2], [3]], 4, prefixes=[[5]])
    with pytest.raises(ValueError, match="eos_token_id"):
        sample(model, [[2]], 4, eos_token_id=[EOS, BK])
    with pytest.raises(ValueError, match="outside"):
        sample_with_backspace(model, [[2]], 4, bkspc_token_id=VOCAB, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="non-empty|at least one token"):
        sample(model, [[2], []], 4)
