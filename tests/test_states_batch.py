"""``states_batch`` (tensor operations, on the model's device) against the per-token Python construction it replaced,
kept here as the reference; and packed rows against one trajectory per row."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import ParallelStates, collate_states, parallel_states
from tests.test_backspace import EOS, PAD, TRAJECTORIES, VOCAB, B, _qwen2
from trl_likelihood.backspace import Trajectory, augment_with_noise
from trl_likelihood.states import replay_states, state_logits, states_batch


def reference_parallel_states(traj: Trajectory, bkspc_id: int) -> ParallelStates:
    """The construction ``states_batch`` replaced, verbatim: one pass over the stream in Python, per trajectory.

    A token is alive at row ``p`` when it was appended at or before ``p`` and is deleted after ``p`` (its "death" is
    the position of the ``<bkspc>`` that deletes it).
    """
    n_prompt, length = len(traj.prompt), len(traj.prompt) + len(traj.stream)
    alive = list(range(n_prompt))  # physical positions of the alive tokens
    position = list(range(n_prompt)) + [0] * len(traj.stream)
    death = [length] * length  # the first row at which a token is no longer alive
    state_index: list[int] = []
    for offset, (token, is_action) in enumerate(zip(traj.stream, traj.is_action)):
        p = n_prompt + offset
        if is_action:
            state_index.append(alive[-1])
        position[p] = len(alive)
        if token != bkspc_id:
            alive.append(p)
            continue
        death[p] = p  # a backspace is never attended to, except by its own row
        if len(alive) > n_prompt:
            death[alive.pop()] = p
    state_index.append(alive[-1])
    rows = torch.arange(length)
    mask = (rows[None, :] <= rows[:, None]) & (torch.tensor(death)[None, :] > rows[:, None])
    is_bkspc = torch.zeros(length, dtype=torch.bool)
    is_bkspc[n_prompt:] = torch.tensor(traj.stream, dtype=torch.long) == bkspc_id
    mask[is_bkspc] = torch.eye(length, dtype=torch.bool)[is_bkspc]
    return ParallelStates(
        input_ids=torch.tensor(traj.prompt + traj.stream, dtype=torch.long),
        position_ids=torch.tensor(position, dtype=torch.long),
        attention_mask=mask,
        state_index=torch.tensor(state_index, dtype=torch.long),
        actions=torch.tensor(traj.actions, dtype=torch.long),
    )


@st.composite
def _batches(draw) -> list[Trajectory]:
    """1-6 trajectories: prompts that may hold the backspace id (an ordinary token there), streams with runs of
    backspaces (some at an empty completion), noise flags, EOS anywhere, empty streams."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        prompt = draw(st.lists(st.sampled_from([B, 4, 9, 17, 33]), min_size=1, max_size=5))
        stream = draw(st.lists(st.sampled_from([B, B, B, EOS, 5, 6, 7, 8]), max_size=16))
        flags = draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
        out.append(Trajectory(prompt, stream, flags))
    return out


def _reference_batch(trajectories: list[Trajectory], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    items = [reference_parallel_states(t, B) for t in trajectories]
    return collate_states(items, pad_token_id=PAD, dtype=dtype, eos_token_id=EOS)


@settings(max_examples=300, deadline=None)
@given(_batches(), st.sampled_from([torch.float32, torch.bfloat16, torch.bool]))
def test_states_batch_equals_the_per_token_construction(trajectories, dtype):
    """Every tensor equal, bit for bit, to the Python construction it replaced (masks in each dtype)."""
    new = states_batch(trajectories, B, PAD, dtype=dtype, eos_token_id=EOS)
    old = _reference_batch(trajectories, dtype)
    for key, value in old.items():
        assert new[key].dtype == value.dtype and torch.equal(new[key], value), key
    assert torch.equal(new["state_row"], torch.arange(len(trajectories)))
    prompt_end = torch.tensor([len(t.prompt) - 1 for t in trajectories])
    assert torch.equal(new["state_empty"], old["state_index"] == prompt_end[:, None])
    real = old["state_index"][old["state_mask"]]
    assert new["first_state"] <= int(real.min())


def test_parallel_states_equals_the_per_token_construction():
    for traj in TRAJECTORIES:
        new, old = parallel_states(traj, B), reference_parallel_states(traj, B)
        for key in ("input_ids", "position_ids", "attention_mask", "state_index", "actions"):
            assert torch.equal(getattr(new, key), getattr(old, key)), key


def test_a_wrong_construction_is_caught():
    """The equality above can fail: one backspace read as a token changes the states."""
    wrong = [Trajectory(t.prompt, [5 if x == B else x for x in t.stream], t.is_action) for t in TRAJECTORIES[:3]]
    new, old = states_batch(wrong, B, PAD, eos_token_id=EOS), _reference_batch(TRAJECTORIES[:3], torch.float32)
    assert not torch.equal(new["attention_mask"], old["attention_mask"])
    assert not torch.equal(new["state_index"], old["state_index"])


def _packable() -> list[Trajectory]:
    rng = random.Random(3)
    long = [
        augment_with_noise([1, 4 + i], [rng.randrange(4, 30) for _ in range(9)] + [EOS], p=0.4, bkspc_id=B,
                           noise_ids=range(4, 30), rng=rng)
        for i in range(2)
    ]  # fmt: skip
    return long + TRAJECTORIES  # the short ones share rows


def test_packing_shares_rows_and_keeps_each_trajectory_alone():
    trajectories = _packable()
    packed = states_batch(trajectories, B, PAD, dtype=torch.bool, eos_token_id=EOS, pack=True)
    plain = states_batch(trajectories, B, PAD, dtype=torch.bool, eos_token_id=EOS)
    rows = packed["state_row"].tolist()
    assert (
        packed["input_ids"].shape[0] < len(trajectories)
        and packed["input_ids"].shape[1] == plain["input_ids"].shape[1]
    )
    for key in ("actions", "action_mask", "state_mask", "terminated", "state_empty"):
        assert torch.equal(packed[key], plain[key]), key
    for b, traj in enumerate(trajectories):
        n = len(traj.prompt) + len(traj.stream)
        start = int((packed["state_index"][b] - plain["state_index"][b]).min())  # the trajectory's offset
        span = slice(start, start + n)
        assert packed["input_ids"][rows[b], span].tolist() == traj.prompt + traj.stream
        assert torch.equal(packed["position_ids"][rows[b], span], plain["position_ids"][b, :n])
        mask = packed["attention_mask"][rows[b], 0, span]
        assert torch.equal(mask[:, span], plain["attention_mask"][b, 0, :n, :n])
        assert mask.sum() == mask[:, span].sum()  # nothing outside its own segment
        assert torch.equal(packed["state_index"][b] - start, plain["state_index"][b])
    first = min(int(packed["state_index"][b][packed["state_mask"][b]].min()) for b in range(len(trajectories)))
    assert packed["first_state"] <= first


LAYOUTS = {
    "packed": dict(pack=True),
    "no-bkspc": dict(feed_backspaces=False),
    "both": dict(pack=True, feed_backspaces=False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_shorter_layouts_give_the_same_state_logits(attn_implementation, layout):
    """Shared rows and rows without <bkspc> tokens: the same logits for every state, from fewer tokens."""
    model = _qwen2(attn_implementation)
    trajectories = _packable()
    with torch.no_grad():
        plain_batch = states_batch(trajectories, B, PAD, eos_token_id=EOS)
        plain = state_logits(model, plain_batch)
        short_batch = states_batch(trajectories, B, PAD, eos_token_id=EOS, **LAYOUTS[layout])
        short = state_logits(model, short_batch)
    assert short_batch["input_ids"].numel() < plain_batch["input_ids"].numel()
    for key in ("actions", "action_mask", "state_mask", "terminated", "state_empty"):
        assert torch.equal(short_batch[key], plain_batch[key]), key
    keep = short_batch["state_mask"]
    torch.testing.assert_close(short[keep], plain[keep], rtol=0, atol=1e-5)
    assert plain.shape[-1] == VOCAB and plain[keep].std() > 0.1


def test_rows_without_backspaces_hold_each_stream_minus_its_backspaces():
    trajectories = _packable()
    batch = states_batch(trajectories, B, PAD, dtype=torch.bool, eos_token_id=EOS, feed_backspaces=False)
    for b, traj in enumerate(trajectories):
        fed = traj.prompt + [x for x in traj.stream if x != B]
        assert batch["input_ids"][b, : len(fed)].tolist() == fed
        assert (batch["input_ids"][b, len(fed) :] == PAD).all()
        mask = batch["attention_mask"][b, 0]
        assert mask.diagonal().all() and not mask.triu(1).any()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_states_batch_builds_on_the_requested_device(device):
    """Built where the model is, equal to the CPU build; the earliest state is a host int, so no read-back."""
    on_cpu = states_batch(_packable(), B, PAD, dtype=torch.bool, eos_token_id=EOS, pack=True)
    there = states_batch(_packable(), B, PAD, dtype=torch.bool, eos_token_id=EOS, pack=True, device=device)
    for key, value in on_cpu.items():
        if isinstance(value, torch.Tensor):
            assert there[key].device.type == device and torch.equal(there[key].cpu(), value), key
    assert isinstance(there["first_state"], int) and there["first_state"] == on_cpu["first_state"]


@settings(max_examples=150, deadline=None)
@given(_batches(), st.sampled_from(list(LAYOUTS)))
def test_every_layout_attends_to_exactly_the_replayed_states(trajectories, layout):
    """In every layout, state ``i``'s query attends to exactly the tokens of replayed state ``u_i``, at 0..n-1."""
    batch = states_batch(trajectories, B, PAD, dtype=torch.bool, eos_token_id=EOS, **LAYOUTS[layout])
    for b, traj in enumerate(trajectories):
        row = int(batch["state_row"][b])
        mask, ids, positions = batch["attention_mask"][row, 0], batch["input_ids"][row], batch["position_ids"][row]
        for index, state in zip(batch["state_index"][b].tolist(), replay_states(traj, B)):
            keys = torch.nonzero(mask[index]).flatten()
            assert ids[keys].tolist() == state and keys[-1] == index
            assert positions[keys].tolist() == list(range(len(state)))
