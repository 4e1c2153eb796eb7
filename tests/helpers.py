"""Small helpers the trainer tests share (one copy of each)."""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import yaml
from transformers import PreTrainedModel

from trl_likelihood.backspace import Trajectory
from trl_likelihood.states import _as_mask, states_batch

# A small LoRA on the attention's query and value projections of the tiny Qwen2.
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def logged_steps(trainer) -> list[dict]:
    """The training steps' entries of ``trainer.state.log_history``."""
    return [h for h in trainer.state.log_history if "loss" in h]


def causal_lms() -> set[int]:
    """Ids of every causal LM alive in this process: a trainer that copies a model shows as a new one."""
    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel) and hasattr(o, "lm_head")}


def read_card(out_dir: str) -> tuple[dict, str]:
    """A saved model card's YAML metadata and its text."""
    text = open(os.path.join(out_dir, "README.md")).read()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


@dataclass
class ParallelStates:
    """One trajectory laid out for a single forward pass that yields the logits of all its decision states.

    Attributes:
        input_ids: ``(L,)`` long, prompt then stream (``L = len(prompt) + len(stream)``).
        position_ids: ``(L,)`` long, the index of each token inside the alive sequence it was appended to (a
            ``<bkspc>`` gets the index it would have had; its output is never read and nothing attends to it).
        attention_mask: ``(L, L)`` bool, ``[p, q]`` true when position ``p`` attends to ``q``: exactly the tokens alive
            in the state after processing ``p`` (``p`` itself included); a ``<bkspc>`` row attends only to itself.
        state_index: ``(T + 1,)`` long, the physical position of the last alive token of ``u_i``, whose output
            logits are ``u_i``'s next-token logits.
        actions: ``(T,)`` long, the actions ``a_0 .. a_{T-1}`` (noise tokens left out).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    state_index: torch.Tensor
    actions: torch.Tensor


def parallel_states(traj: Trajectory, bkspc_id: int) -> ParallelStates:
    """Lay ``traj`` out for one forward pass (ALGORITHMS.md 3(b) option B): ``states_batch`` of one trajectory (on
    the CPU), for inspecting a single layout."""
    batch = states_batch([traj], bkspc_id, pad_token_id=0, dtype=torch.bool)
    return ParallelStates(
        input_ids=batch["input_ids"][0],
        position_ids=batch["position_ids"][0],
        attention_mask=batch["attention_mask"][0, 0],
        state_index=batch["state_index"][0],
        actions=batch["actions"][0],
    )


def collate_states(
    items: Sequence[ParallelStates],
    pad_token_id: int,
    dtype: torch.dtype = torch.float32,
    eos_token_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad ``ParallelStates`` one by one, on the CPU: the batch ``states_batch`` builds in one go, written the
    plain way for tests to check it against.

    Returns:
        ``input_ids`` ``(B, L)`` (``pad_token_id`` after each row), ``position_ids`` ``(B, L)`` (0 on padding),
        ``attention_mask`` ``(B, 1, L, L)`` additive ``dtype`` (0 where attended, ``finfo(dtype).min`` elsewhere;
        a padding row attends to itself only, so no row is empty), ``state_index`` ``(B, T + 1)`` and ``state_mask``
        bool, ``actions`` ``(B, T)`` and ``action_mask`` bool (padding 0 / false), ``terminated`` ``(B,)`` bool: the
        last action is ``eos_token_id`` (all false when it is ``None``).
    """
    batch, length = len(items), max(len(it.input_ids) for it in items)
    steps = max(len(it.actions) for it in items)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(batch, length, dtype=torch.long)
    allowed = torch.eye(length, dtype=torch.bool).repeat(batch, 1, 1)
    state_index = torch.zeros(batch, steps + 1, dtype=torch.long)
    actions = torch.zeros(batch, steps, dtype=torch.long)
    state_mask = torch.zeros(batch, steps + 1, dtype=torch.bool)
    action_mask = torch.zeros(batch, steps, dtype=torch.bool)
    terminated = torch.zeros(batch, dtype=torch.bool)
    for b, it in enumerate(items):
        n, t = len(it.input_ids), len(it.actions)
        input_ids[b, :n], position_ids[b, :n], allowed[b, :n, :n] = it.input_ids, it.position_ids, it.attention_mask
        state_index[b, : t + 1], state_mask[b, : t + 1] = it.state_index, True
        actions[b, :t], action_mask[b, :t] = it.actions, True
        terminated[b] = eos_token_id is not None and t > 0 and int(it.actions[-1]) == eos_token_id
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": _as_mask(allowed[:, None], dtype),
        "state_index": state_index,
        "state_mask": state_mask,
        "actions": actions,
        "action_mask": action_mask,
        "terminated": terminated,
    }
