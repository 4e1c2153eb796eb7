"""The decision states of ``<bkspc>`` trajectories (ALGORITHMS.md 3(b)), laid out for one forward pass.

Decision states: ``u_i`` is the alive token list just before action ``i`` (non-action tokens emitted before it, such
as a noise token or a forced prefix, are part of the transition, so they are in ``u_i``); ``u_T`` is the alive list
at the end of the stream. ``replay_states`` builds them one by one (the reference, option A of 3(b)). ``states_batch``
+ ``state_logits`` get the logits of all of them from one forward pass (option B): the physical stream is fed once,
each position attends to exactly the tokens alive in its own state, with position ids counted inside the alive
sequence. A token ``q`` that is alive at position ``p`` saw, when it was processed, exactly the alive prefix in front
of it (a backspace only deletes the last alive token, so nothing in front of ``q`` can die while ``q`` lives), hence
every hidden state equals the one of the state run on its own. The logits of a state are read at the physical
position of its last alive token; a ``<bkspc>`` position's output is never used.

``states_batch`` builds the whole batch with tensor operations on the model's device: the number of alive tokens
after each position is a random walk held at the prompt's length (a running maximum), a token dies at the first later
position where that count drops below its own, and the masks, positions and state indices follow from those two. The
only Python work is reading the token lists (one flat list per batch) and, with ``pack=True``, choosing the rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from .backspace import Trajectory
from .modeling import core_model


def replay_states(traj: Trajectory, bkspc_id: int) -> list[list[int]]:
    """The ``T + 1`` decision states' alive token lists, prompt included (the naive reference, one list per state).

    ``u_i`` is the alive list just before action ``i`` (non-action tokens before it included); ``u_T`` the alive
    list at the end of the stream. A ``<bkspc>`` at an empty completion deletes nothing.
    """
    alive = list(traj.prompt)
    states: list[list[int]] = []
    for token, is_action in zip(traj.stream, traj.is_action):
        if is_action:
            states.append(list(alive))
        if token != bkspc_id:
            alive.append(token)
        elif len(alive) > len(traj.prompt):
            alive.pop()
    states.append(alive)
    return states


def _as_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``allowed`` (true = attend) for ``torch.bool``, else additive: 0 where attended, ``finfo.min`` elsewhere."""
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _first_fit(lengths: Sequence[int], capacity: int) -> tuple[list[int], list[int]]:
    """Row and offset of each sequence, packed in order: each goes into the first row with room, else a new row.
    Scalar bookkeeping over the batch's lengths; when nothing fits together, sequence ``i`` is row ``i``."""
    rows, offsets, used = [], [], []
    for n in lengths:
        row = next((r for r, u in enumerate(used) if u + n <= capacity), len(used))
        if row == len(used):
            used.append(0)
        rows.append(row)
        offsets.append(used[row])
        used[row] += n
    return rows, offsets


def _padded(flat: torch.Tensor, dest: torch.Tensor, size: int, fill: Any) -> torch.Tensor:
    """A ``(size,)`` tensor holding ``flat[k]`` at ``dest[k]`` and ``fill`` elsewhere; ``dest == size`` drops ``k``."""
    out = torch.full((size + 1,), fill, dtype=flat.dtype, device=flat.device)
    return out.scatter_(0, dest, flat)[:size]


def _alive_counts(tokens: torch.Tensor, valid: torch.Tensor, n_prompt: torch.Tensor, bkspc_id: int) -> torch.Tensor:
    """``(N, W)``: how many tokens are alive after each position. Each stream token adds one and each ``<bkspc>``
    removes one, never below the prompt's length: a walk held at a floor, i.e. the free walk plus the running maximum
    of how far it fell under the floor."""
    width = tokens.size(1)
    in_stream = valid & (torch.arange(width, device=tokens.device) >= n_prompt[:, None])
    is_bkspc = in_stream & (tokens == bkspc_id)
    free = torch.where(is_bkspc, -1, 1).masked_fill(~valid, 0).cumsum(1)
    under = torch.where(in_stream, n_prompt[:, None] - free, -width).cummax(1).values.clamp(min=0)
    return free + under


def _deaths(counts: torch.Tensor, valid: torch.Tensor, is_bkspc: torch.Tensor) -> torch.Tensor:
    """``(N, W)``: the first position at which each token is no longer alive (``W`` if never). A pushed token dies at
    the first later position whose alive count is below its own (the ``<bkspc>`` that pops it); a ``<bkspc>`` is never
    attended to, so it "dies" at itself."""
    width = counts.size(1)
    ar = torch.arange(width, device=counts.device)
    falls = (ar[None, :] > ar[:, None]) & valid[:, None, :] & (counts[:, None, :] < counts[:, :, None])  # [q, r]
    death = torch.where(falls.any(-1), falls.to(torch.uint8).argmax(-1), width)
    return torch.where(is_bkspc, ar, death)


def states_batch(
    trajectories: Sequence[Trajectory],
    bkspc_id: int,
    pad_token_id: int,
    *,
    dtype: torch.dtype = torch.float32,
    eos_token_id: int | None = None,
    device: torch.device | str | None = None,
    pack: bool = False,
    feed_backspaces: bool = True,
) -> dict[str, Any]:
    """The batch for ``state_logits`` and the SequenceMatch loss, built on ``device`` with tensor operations.

    With the defaults each trajectory has its own row, right-padded, with all its tokens fed: equal to a per-token
    construction of the states one trajectory at a time (kept in the tests as the reference). Two options give the
    same state logits from fewer tokens (tested):

    - ``feed_backspaces=False`` leaves the ``<bkspc>`` tokens out of the rows: no state reads their output and no
      position attends to them, so they only cost compute (a noise token and its ``<bkspc>`` add two tokens to a data
      row, of which only the noise token is a state).
    - ``pack=True``: trajectories share rows in order (first fit, up to the longest one's length) instead of each
      being padded to it; the 4-D mask is block-diagonal and positions restart in each trajectory.

    Returns:
        Over ``R`` rows (``R = B`` without ``pack``): ``input_ids`` ``(R, L)`` (``pad_token_id`` after each row's
        tokens), ``position_ids`` ``(R, L)`` (0 on padding), ``attention_mask`` ``(R, 1, L, L)`` in ``dtype``
        (``torch.bool``: true = attend; a float dtype: additive, 0 where attended and ``finfo(dtype).min``
        elsewhere; a padding position attends to itself only, so no row of the mask is empty). Per trajectory:
        ``state_index`` ``(B, T + 1)`` and ``state_mask`` bool, ``actions`` ``(B, T)`` and ``action_mask`` bool
        (padding 0 / false), ``terminated`` ``(B,)`` bool (the last action is ``eos_token_id``; all false when it is
        ``None``), ``state_row`` ``(B,)`` (the row that holds each trajectory; ``state_index`` is a position in that
        row, padding states pointing at the trajectory's first token), ``state_empty`` ``(B, T + 1)`` (the state's
        completion is empty: ``<bkspc>`` is not an action there) and ``first_state``, a Python int no state index is
        below (so ``state_logits`` needs no host sync to cut the prompt's logits).
    """
    if not trajectories:
        raise ValueError("`states_batch` needs at least one trajectory.")
    n_prompt_host = [len(t.prompt) for t in trajectories]
    length_host = [len(t.prompt) + len(t.stream) for t in trajectories]
    fed_host = (
        length_host if feed_backspaces else [n - t.stream.count(bkspc_id) for n, t in zip(length_host, trajectories)]
    )
    steps_host = [sum(t.is_action) for t in trajectories]
    width, horizon, count, row_width = max(length_host), max(steps_host), len(trajectories), max(fed_host)
    rows_host, offsets_host = _first_fit(fed_host, row_width) if pack else (list(range(count)), [0] * count)
    n_rows = max(rows_host) + 1
    flat_ids = list(itertools.chain.from_iterable(x for t in trajectories for x in (t.prompt, t.stream)))
    flat_actions = list(
        itertools.chain.from_iterable(
            x for t in trajectories for x in (itertools.repeat(False, len(t.prompt)), t.is_action)
        )
    )
    device = torch.device("cpu") if device is None else device
    sizes = torch.tensor([n_prompt_host, length_host, steps_host, rows_host, offsets_host]).to(device)
    n_prompt, length, steps, rows, offsets = sizes.unbind(0)
    flat_ids = torch.tensor(flat_ids, dtype=torch.long).to(device)
    flat_actions = torch.tensor(flat_actions, dtype=torch.bool).to(device)

    # Per trajectory (N, W): the flat lists right-padded; alive counts, positions, deaths and the last alive token.
    ar = torch.arange(width, device=device)
    valid = ar < length[:, None]
    owner = torch.repeat_interleave(torch.arange(count, device=device), length, output_size=len(flat_ids))
    starts = length.cumsum(0) - length
    dest = owner * width + torch.arange(len(flat_ids), device=device) - starts[owner]
    tokens = _padded(flat_ids, dest, count * width, pad_token_id).view(count, width)
    is_action = _padded(flat_actions, dest, count * width, False).view(count, width)
    is_bkspc = valid & (ar >= n_prompt[:, None]) & (tokens == bkspc_id)
    counts = _alive_counts(tokens, valid, n_prompt, bkspc_id)
    positions = torch.cat([counts.new_zeros(count, 1), counts[:, :-1]], 1).masked_fill(~valid, 0)
    death = _deaths(counts, valid, is_bkspc)
    alive = (ar[None, :] <= ar[:, None]) & (death[:, None, :] > ar[None, :, None]) & valid[:, None, :]  # [p, q]
    last = (width - 1) - alive.flip(-1).to(torch.uint8).argmax(-1)  # the last token alive after each position

    # Into the rows (R, W'): the fed tokens of each trajectory from its offset; deaths in row coordinates.
    fed = valid & ~is_bkspc if not feed_backspaces else valid
    column = offsets[:, None] + fed.long().cumsum(1) - fed.long()  # (N, W) the row column of each fed token
    into = torch.where(fed, rows[:, None] * row_width + column, n_rows * row_width).flatten()

    def place(values: torch.Tensor, fill: Any) -> torch.Tensor:
        return _padded(values.flatten(), into, n_rows * row_width, fill).view(n_rows, row_width)

    dies_at = torch.where(death < width, column.gather(1, death.clamp(max=width - 1)), 2 * row_width)
    segment = place(torch.arange(count, device=device)[:, None].expand(count, width), -1)
    row_death = place(dies_at, 2 * row_width)
    row_bkspc = place(is_bkspc, True)  # padding rows attend to themselves only, like a <bkspc> row
    ac = torch.arange(row_width, device=device)
    row_alive = (segment[:, :, None] == segment[:, None, :]) & (ac[None, :] <= ac[:, None])
    row_alive &= row_death[:, None, :] > ac[None, :, None]
    allowed = torch.where(row_bkspc[:, :, None], torch.eye(row_width, dtype=torch.bool, device=device), row_alive)

    # Decision states: before each action, the last alive token of the previous position; then the final state.
    top = column.gather(1, last)  # (N, W) row column of the last token alive after each position
    before = torch.cat([top[:, :1], top[:, :-1]], 1)
    slot = torch.where(is_action, is_action.cumsum(1) - 1, horizon + 1)
    state_index = torch.zeros(count, horizon + 2, dtype=torch.long, device=device).scatter_(1, slot, before)
    final = top.gather(1, (length - 1)[:, None])
    state_index = state_index.scatter_(1, steps[:, None], final)[:, : horizon + 1]
    state_mask = torch.arange(horizon + 1, device=device) <= steps[:, None]
    state_index = torch.where(state_mask, state_index, offsets[:, None])
    actions = torch.zeros(count, horizon + 2, dtype=torch.long, device=device).scatter_(1, slot, tokens)
    last_action = actions.gather(1, (steps - 1).clamp(min=0)[:, None])[:, 0]
    actions, action_mask = actions[:, :horizon], state_mask[:, 1:]
    terminated = (steps > 0) & (last_action == eos_token_id) if eos_token_id is not None else steps < 0
    return {
        "input_ids": place(tokens, pad_token_id),
        "position_ids": place(positions, 0),
        "attention_mask": _as_mask(allowed[:, None], dtype),
        "state_index": state_index,
        "state_mask": state_mask,
        "actions": actions,
        "action_mask": action_mask,
        "terminated": terminated,
        "state_row": rows,
        "state_empty": state_index == (offsets + n_prompt - 1)[:, None],
        "first_state": min(o + n - 1 for o, n in zip(offsets_host, n_prompt_host)),
    }


def _mask_for(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The 4-D custom mask in the form the model's attention implementation needs.

    Checked on transformers 5.24 (``masking_utils._preprocess_mask_arguments``): any 4-D tensor is returned as-is,
    with no causal mask combined and no dtype conversion, and reaches the attention function unchanged. There,
    ``eager`` (and ``flex_attention``'s ``score_mod``) *add* it to the scores, so a bool mask would silently add 0/1
    (measured: logits off by ~0.08 on the tiny Qwen2) and it must be additive float; ``sdpa`` takes bool (true =
    attend) or an additive float, and gets bool here, which has no dtype to match under autocast; the flash-attention
    kernels take only a 2-D padding mask and ignore the custom one, so they are refused. Sliding-window layers are
    refused too: their window would be dropped, as the 4-D mask replaces the window mask.
    """
    core = core_model(model)
    config = getattr(core, "config", None)
    implementation = str(getattr(config, "_attn_implementation", None) or "eager")
    if "flash" in implementation:
        raise ValueError(
            f"`state_logits` needs a custom 4-D attention mask, which attn_implementation={implementation!r} does not "
            "apply; load the model with attn_implementation='sdpa' or 'eager'."
        )
    window = getattr(config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(config, "layer_types", None) or []) and mask.shape[-1] > window:
        raise ValueError(f"Sequences of {mask.shape[-1]} tokens exceed the model's sliding window ({window}).")
    allowed = mask if mask.dtype == torch.bool else mask == 0
    if implementation == "sdpa":
        return allowed
    dtype = core.get_input_embeddings().weight.dtype
    if mask.dtype == dtype:
        return mask
    return _as_mask(allowed, dtype)


def state_logits(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The next-token logits of every decision state, ``(B, T + 1, V)``, from one forward pass.

    Args:
        model: a Hugging Face causal LM (PEFT- or DDP-wrapped allowed) with ``attn_implementation`` ``"sdpa"``,
            ``"eager"`` or ``"flex_attention"``.
        batch: ``states_batch``'s output (or a batch laid out the same way) on the model's device; its
            ``attention_mask`` may be additive float of any dtype or bool (true = attend), and is converted for the
            implementation (see ``_mask_for``). Packed rows are read through ``state_row``.
    Returns:
        Logits in the model's output dtype; entries where ``state_mask`` is false are padding (some position's
        logits, to be masked). Only the positions from the earliest state on are projected to the vocabulary
        (``logits_to_keep``), so the prompt's logits are never built. With ``states_batch``'s ``first_state`` this
        needs no host sync; a batch without it reads its earliest state back from the device.
    """
    state_index, state_mask = batch["state_index"], batch["state_mask"]
    length = batch["input_ids"].shape[1]
    first = batch.get("first_state")
    if first is None:
        first = int(state_index[state_mask].min()) if bool(state_mask.any()) else 0
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=_mask_for(model, batch["attention_mask"]),
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=length - first,
    )
    index = (state_index - first).clamp(min=0)
    rows = batch.get("state_row")
    rows = torch.arange(index.shape[0], device=index.device) if rows is None else rows
    return outputs.logits[rows[:, None], index]
