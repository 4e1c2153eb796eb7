"""SequenceMatch's <bkspc>: decision states replayed vs one masked forward pass, noise augmentation, vocabulary."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from tests.helpers import collate_states, parallel_states
from trl_likelihood.backspace import BACKSPACE, Trajectory, add_backspace_token, apply_backspaces, augment_with_noise
from trl_likelihood.states import replay_states, state_logits

B, EOS, PAD, VOCAB = 3, 2, 0, 40  # <bkspc>, EOS and PAD ids of the toy vocabulary below


def _qwen2(attn_implementation: str, vocab_size: int = VOCAB) -> Qwen2ForCausalLM:
    """A tiny Qwen2 with grouped-query attention and large weights, so that a wrong mask or position moves logits."""
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
        pad_token_id=PAD,
        eos_token_id=EOS,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def _naive_logits(model: torch.nn.Module, traj: Trajectory) -> torch.Tensor:
    """Each replayed state alone through the model (no padding), last position: the reference, ``(T + 1, V)``."""
    with torch.no_grad():
        return torch.stack([model(torch.tensor([s])).logits[0, -1] for s in replay_states(traj, B)])


# Hand-built trajectories: noise tokens (is_action False), consecutive backspaces, a backspace of the token next to
# the prompt, a backspace at an empty completion (deletes nothing), noise right after the prompt, no action at all.
NOISY = Trajectory([10, 11], [20, 30, B, 21, B, B, 22, EOS], [True, False, True, True, True, True, True, True])
TRAJECTORIES = [
    NOISY,
    Trajectory([5, 6, 7], [12, 13, B, B, B, 14, 15, 16, B, 17]),  # consecutive; the third at an empty completion
    Trajectory([9], [18, B, 19, 33, B, 25, EOS]),  # backspace right after the prompt-adjacent token
    Trajectory([4, 8, 12, 16, 20, 24], [31, B, 32, EOS], [False, True, True, True]),  # noise right after the prompt
    Trajectory([7, 7], []),  # T = 0: one state, the prompt
]


def test_replay_states_by_hand():
    assert replay_states(NOISY, B) == [
        [10, 11],
        [10, 11, 20, 30],  # the noise token is part of the state in which the expert backspaces
        [10, 11, 20],
        [10, 11, 20, 21],
        [10, 11, 20],
        [10, 11],
        [10, 11, 22],
        [10, 11, 22, EOS],
    ]
    assert replay_states(Trajectory([1], [B, B, 5]), B) == [[1], [1], [1], [1, 5]]  # the prompt is never deleted
    assert replay_states(TRAJECTORIES[-1], B) == [[7, 7]]


def test_parallel_states_by_hand():
    ps = parallel_states(NOISY, B)
    assert ps.input_ids.tolist() == [10, 11, 20, 30, B, 21, B, B, 22, EOS]
    assert ps.actions.tolist() == [20, B, 21, B, B, 22, EOS]  # the noise token 30 is not an action
    assert ps.state_index.tolist() == [1, 3, 2, 5, 2, 1, 8, 9]
    assert ps.position_ids.tolist() == [0, 1, 2, 3, 4, 3, 4, 3, 2, 3]
    attended = [set(torch.nonzero(row).flatten().tolist()) for row in ps.attention_mask]
    assert attended == [{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {4}, {0, 1, 2, 5}, {6}, {7}, {0, 1, 8}, {0, 1, 8, 9}]


@st.composite
def _trajectories(draw) -> Trajectory:
    prompt = draw(st.lists(st.integers(4, VOCAB - 1), min_size=1, max_size=4))
    stream = draw(st.lists(st.sampled_from([B, B, EOS, 5, 6, 7, 8, 9]), max_size=14))
    flags = draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
    return Trajectory(prompt, stream, flags)


@settings(max_examples=150, deadline=None)
@given(_trajectories())
def test_parallel_states_match_replay_structurally(traj):
    """Row ``state_index[i]`` attends to exactly the tokens of replayed state ``u_i``, at positions 0..n-1."""
    ps, states = parallel_states(traj, B), replay_states(traj, B)
    assert ps.actions.tolist() == traj.actions and len(ps.state_index) == len(states) == len(traj.actions) + 1
    for index, state in zip(ps.state_index.tolist(), states):
        keys = torch.nonzero(ps.attention_mask[index]).flatten()
        assert ps.input_ids[keys].tolist() == state and keys[-1] == index  # the state's last token is the query
        assert ps.position_ids[keys].tolist() == list(range(len(state)))
    assert ps.attention_mask.diagonal().all() and not ps.attention_mask.triu(1).any()  # causal, never empty
    is_bkspc = ps.input_ids == B
    is_bkspc[: len(traj.prompt)] = False  # a prompt token with the backspace id is just a token
    assert (
        not ps.attention_mask[:, is_bkspc]
        .logical_and(~torch.eye(len(ps.input_ids), dtype=torch.bool)[:, is_bkspc])
        .any()
    )
    assert replay_states(traj, B)[-1] == traj.prompt + traj.completion(B)
    assert traj.completion(B) == apply_backspaces(traj.stream, B)


def test_actions_never_contain_noise_tokens():
    rng = random.Random(0)
    noise_ids = list(range(30, 40))
    for _ in range(50):
        completion = [rng.randrange(4, 30) for _ in range(rng.randint(1, 8))] + [EOS]
        traj = augment_with_noise([1], completion, p=0.5, bkspc_id=B, noise_ids=noise_ids, rng=rng)
        actions = parallel_states(traj, B).actions.tolist()
        assert actions == traj.actions and not set(actions) & set(noise_ids)
        assert len(actions) == len(completion) + traj.stream.count(B)


def test_collate_states_padding_and_masks():
    items = [parallel_states(t, B) for t in TRAJECTORIES]
    batch = collate_states(items, pad_token_id=PAD, eos_token_id=EOS)
    lengths = [len(it.input_ids) for it in items]
    steps = [len(it.actions) for it in items]
    width, horizon = max(lengths), max(steps)
    assert batch["input_ids"].shape == batch["position_ids"].shape == (len(items), width)
    assert batch["attention_mask"].shape == (len(items), 1, width, width)
    assert batch["attention_mask"].dtype == torch.float32
    assert batch["state_index"].shape == batch["state_mask"].shape == (len(items), horizon + 1)
    assert batch["actions"].shape == batch["action_mask"].shape == (len(items), horizon)
    values = set(batch["attention_mask"].unique().tolist())
    assert values == {0.0, torch.finfo(torch.float32).min}
    allowed = batch["attention_mask"][:, 0] == 0
    for b, (it, n, t) in enumerate(zip(items, lengths, steps)):
        assert torch.equal(allowed[b, :n, :n], it.attention_mask) and not allowed[b, :n, n:].any()
        assert torch.equal(allowed[b, n:, :], torch.eye(width, dtype=torch.bool)[n:])  # padding rows: themselves only
        assert (batch["input_ids"][b, n:] == PAD).all() and (batch["position_ids"][b, n:] == 0).all()
        assert torch.equal(batch["position_ids"][b, :n], it.position_ids)
        assert batch["state_mask"][b].tolist() == [True] * (t + 1) + [False] * (horizon - t)
        assert batch["action_mask"][b].tolist() == [True] * t + [False] * (horizon - t)
        assert (
            torch.equal(batch["state_index"][b, : t + 1], it.state_index)
            and (batch["state_index"][b, t + 1 :] == 0).all()
        )
        assert torch.equal(batch["actions"][b, :t], it.actions) and (batch["actions"][b, t:] == 0).all()
    assert batch["terminated"].tolist() == [True, False, True, True, False]  # last action EOS; T = 0 is not terminated
    assert not collate_states(items, pad_token_id=PAD)["terminated"].any()  # no eos_token_id: nothing terminates
    half = collate_states(items, pad_token_id=PAD, dtype=torch.bfloat16)["attention_mask"]
    assert half.dtype == torch.bfloat16 and torch.equal(half == 0, batch["attention_mask"] == 0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_state_logits_equal_replayed_states(attn_implementation):
    model = _qwen2(attn_implementation)
    rng = random.Random(1)
    augmented = [
        augment_with_noise([1, 4 + i], [rng.randrange(4, 30) for _ in range(6)] + [EOS], p=0.4, bkspc_id=B,
                           noise_ids=range(4, 30), rng=rng)
        for i in range(3)
    ]  # fmt: skip
    trajectories = TRAJECTORIES + augmented
    assert any(not all(t.is_action) for t in augmented)  # the seeded draw did insert noise
    batch = collate_states([parallel_states(t, B) for t in trajectories], pad_token_id=PAD, eos_token_id=EOS)
    with torch.no_grad():
        logits = state_logits(model, batch)
    assert logits.shape == (len(trajectories), batch["state_mask"].shape[1], VOCAB)
    for b, traj in enumerate(trajectories):
        expected = _naive_logits(model, traj)
        torch.testing.assert_close(logits[b, : len(expected)], expected, rtol=0, atol=1e-5)
    assert logits.std() > 0.1  # the comparison is not between near-constant logits


def test_state_logits_match_a_left_padded_batch_of_states():
    """The reference run as one left-padded batch (positions counted from each row's first token) agrees too."""
    model = _qwen2("sdpa")
    states = [s for t in TRAJECTORIES for s in replay_states(t, B)]
    width = max(len(s) for s in states)
    ids = torch.tensor([[PAD] * (width - len(s)) + s for s in states])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in states])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[
            :, -1
        ]
        batch = collate_states([parallel_states(t, B) for t in TRAJECTORIES], pad_token_id=PAD)
        parallel = state_logits(model, batch)[batch["state_mask"]]
    torch.testing.assert_close(parallel, padded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_state_logits_accept_any_mask_dtype(attn_implementation):
    """The batch mask may be bool, bf16 or fp32: ``state_logits`` converts it for the attention implementation."""
    model = _qwen2(attn_implementation)
    batch = collate_states([parallel_states(t, B) for t in TRAJECTORIES], pad_token_id=PAD)
    with torch.no_grad():
        reference = state_logits(model, batch)
        for mask in (batch["attention_mask"] == 0, batch["attention_mask"].to(torch.bfloat16)):
            torch.testing.assert_close(
                state_logits(model, {**batch, "attention_mask": mask}), reference, rtol=0, atol=0
            )


def test_eager_attention_adds_a_4d_bool_mask():
    """The finding behind ``_mask_for`` (transformers 5.24): a 4-D mask is passed through unchanged, and eager
    attention adds it to the scores, so a bool mask is silently wrong there while sdpa reads it as a mask.
    If this starts failing, transformers now converts 4-D bool masks: update ``_mask_for``'s docstring."""
    batch = collate_states([parallel_states(NOISY, B)], pad_token_id=PAD)
    allowed = batch["attention_mask"] == 0
    inputs = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    with torch.no_grad():
        for implementation, same in (("eager", False), ("sdpa", True)):
            model = _qwen2(implementation)
            as_float = model(**inputs, attention_mask=batch["attention_mask"]).logits
            as_bool = model(**inputs, attention_mask=allowed).logits
            assert torch.allclose(as_float, as_bool, atol=1e-5) is same, implementation


class _FlashModel(torch.nn.Module):
    config = SimpleNamespace(_attn_implementation="flash_attention_2")


def test_state_logits_gradients_flow_and_refuse_flash():
    model = _qwen2("sdpa")
    batch = collate_states([parallel_states(t, B) for t in TRAJECTORIES[:2]], pad_token_id=PAD)
    state_logits(model, batch)[batch["state_mask"]].logsumexp(-1).sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="flash_attention_2"):
        state_logits(_FlashModel(), batch)


# ----------------------------------------------------------------------------------------------------------------
# Noise augmentation


def test_noise_p0_is_the_clean_trajectory():
    rng = random.Random(0)
    before = rng.getstate()
    traj = augment_with_noise([1, 2], [5, 6, EOS], p=0.0, bkspc_id=B, noise_ids=range(4, 30), rng=rng)
    assert (traj.prompt, traj.stream, traj.is_action) == ([1, 2], [5, 6, EOS], [True, True, True])
    assert rng.getstate() == before  # p = 0 draws nothing: clean data stays aligned with the noisy runs' stream


def test_noise_structure_is_variant_a():
    """Every noise token: not an action, followed by an expert <bkspc> and the expert token, which it differs from."""
    rng = random.Random(3)
    completion = [4, 5, 4, 5, 4, EOS] * 20
    traj = augment_with_noise([1], completion, p=1.0, bkspc_id=B, noise_ids=[4, 5, EOS], rng=rng)
    expected_flags = [False, True, True] * len(completion)  # p = 1: noise before every token, EOS included
    assert traj.is_action == expected_flags and traj.stream[1::3] == [B] * len(completion)
    assert traj.stream[2::3] == completion and all(n != c for n, c in zip(traj.stream[0::3], completion))
    assert traj.actions == [a for c in completion for a in (B, c)] and traj.completion(B) == completion
    some = augment_with_noise([1], completion, p=0.3, bkspc_id=B, noise_ids=range(4, 30), rng=rng)
    for i, flag in enumerate(some.is_action):
        if not flag:
            assert some.stream[i + 1] == B and some.is_action[i + 1] and some.stream[i] != some.stream[i + 2]
    assert some.stream.count(B) == some.is_action.count(False) > 0 and some.completion(B) == completion


def test_noise_rate_and_uniformity():
    p, n = 0.2, 20_000
    rng = random.Random(7)
    completion = [rng.randrange(4, 10) for _ in range(n)]
    traj = augment_with_noise([1], completion, p=p, bkspc_id=B, noise_ids=range(4, 10), rng=rng)
    inserted = traj.is_action.count(False)
    assert abs(inserted / n - p) < 6 * (p * (1 - p) / n) ** 0.5  # 6 sigma of the binomial: ~1e-9 false alarms
    noise = [t for t, a in zip(traj.stream, traj.is_action) if not a]
    counts = torch.bincount(torch.tensor(noise), minlength=10)[4:].float()
    expected = inserted / 6  # each of the 6 ids is excluded 1/6 of the time and drawn 1/5 otherwise
    assert (counts - expected).abs().max() < 6 * expected**0.5


def test_noise_is_seeded():
    def draw(seed):
        args = dict(p=0.5, bkspc_id=B, noise_ids=range(4, 30), rng=random.Random(seed))
        return augment_with_noise([1], list(range(4, 24)), **args)

    assert draw(0) == draw(0) and draw(0) != draw(1)


def test_noise_errors():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="`p`"):
        augment_with_noise([1], [5], p=1.5, bkspc_id=B, noise_ids=[6], rng=rng)
    with pytest.raises(ValueError, match="backspace"):
        augment_with_noise([1], [5], p=0.5, bkspc_id=B, noise_ids=[6, B], rng=rng)
    with pytest.raises(ValueError, match="no token other than"):
        augment_with_noise([1], [5], p=1.0, bkspc_id=B, noise_ids=[5], rng=rng)


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary


@pytest.fixture
def model_and_tok(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_add_backspace_token(model_and_tok):
    model, tok = model_and_tok
    n = len(tok)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    assert BACKSPACE not in tok.get_vocab() and old_in.shape[0] == n
    bkspc = add_backspace_token(model, tok)
    assert bkspc == n and len(tok) == n + 1 and model.config.vocab_size == n + 1
    assert tok.encode(BACKSPACE, add_special_tokens=False) == [bkspc]
    assert bkspc in tok.encode(f"the cat{BACKSPACE} dog", add_special_tokens=False)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == n + 1
    torch.testing.assert_close(new_in[:n], old_in, rtol=0, atol=0)  # old rows untouched
    torch.testing.assert_close(new_out[:n], old_out, rtol=0, atol=0)
    torch.testing.assert_close(new_in[bkspc], old_in.mean(0))
    torch.testing.assert_close(new_out[bkspc], old_out.mean(0))  # the tiny model's head is untied
    with torch.no_grad():
        assert model(torch.tensor([[5, bkspc]])).logits.shape[-1] == n + 1

    with torch.no_grad():
        new_in[bkspc] += 1.0  # as if trained: a second call must not reset it
    trained = new_in[bkspc].clone()
    assert add_backspace_token(model, tok) == bkspc and len(tok) == n + 1
    assert model.get_input_embeddings().weight.shape[0] == n + 1
    torch.testing.assert_close(model.get_input_embeddings().weight[bkspc], trained, rtol=0, atol=0)


def test_add_backspace_token_tied_and_padded_vocabulary(tiny_model_dir):
    """A tied head follows the input row; a vocabulary padded past the tokenizer is not resized (no new row)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    n = len(tok)
    config = Qwen2Config(vocab_size=n + 8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    old = model.get_input_embeddings().weight.detach().clone()
    bkspc = add_backspace_token(model, tok)
    weight = model.get_input_embeddings().weight
    assert bkspc == n and weight.shape[0] == n + 8 and model.get_output_embeddings().weight is weight
    torch.testing.assert_close(weight[bkspc], old[:n].mean(0))  # the mean of real tokens, not of the padding rows
    torch.testing.assert_close(weight[n + 1 :], old[n + 1 :], rtol=0, atol=0)


def test_add_backspace_token_peft(model_and_tok):
    model, tok = model_and_tok
    n = len(tok)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    mean = lora.get_base_model().get_input_embeddings().weight.detach().mean(0)
    bkspc = add_backspace_token(lora, tok)
    base = lora.get_base_model()
    assert bkspc == n and base.get_input_embeddings().weight.shape[0] == n + 1 and base.config.vocab_size == n + 1
    torch.testing.assert_close(base.get_input_embeddings().weight[bkspc], mean)
    assert any("lora_A" in name for name, _ in lora.named_parameters())  # still a LoRA model
    with torch.no_grad():
        assert lora(input_ids=torch.tensor([[5, bkspc]])).logits.shape == (1, 2, n + 1)
    assert add_backspace_token(lora, tok) == bkspc and base.get_input_embeddings().weight.shape[0] == n + 1
    traj = Trajectory(tok.encode("the cat"), [*tok.encode(" dog"), bkspc, *tok.encode(" runs"), tok.eos_token_id])
    with torch.no_grad():
        batch = collate_states([parallel_states(traj, bkspc)], pad_token_id=tok.pad_token_id)
        parallel = state_logits(lora, batch)[0]
        naive = torch.stack([lora(input_ids=torch.tensor([s])).logits[0, -1] for s in replay_states(traj, bkspc)])
    torch.testing.assert_close(parallel, naive, rtol=0, atol=1e-5)  # through the PEFT wrapper (logits_to_keep too)


def test_add_backspace_token_survives_save_and_load(model_and_tok, tmp_path):
    model, tok = model_and_tok
    bkspc = add_backspace_token(model, tok)
    tok.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    tok2, model2 = AutoTokenizer.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (
        tok2.convert_tokens_to_ids(BACKSPACE) == bkspc
        and tok2.encode(f"a{BACKSPACE}b", add_special_tokens=False).count(bkspc) == 1
    )
    assert add_backspace_token(model2, tok2) == bkspc and len(tok2) == len(tok)  # nothing added twice
    torch.testing.assert_close(
        model2.get_input_embeddings().weight, model.get_input_embeddings().weight, rtol=0, atol=0
    )


def test_add_backspace_token_errors(model_and_tok, monkeypatch):
    model, tok = model_and_tok
    with pytest.raises(ValueError, match="non-empty"):
        add_backspace_token(model, tok, token="")
    monkeypatch.setattr(tok, "add_special_tokens", lambda *args, **kwargs: 0)  # a tokenizer that cannot add tokens
    with pytest.raises(ValueError, match="single token"):
        add_backspace_token(model, tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)  # the model was left alone
