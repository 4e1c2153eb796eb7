"""SequenceMatch's ``<bkspc>`` action: trajectories that contain backspaces, and the states they pass through.

Generation with ``<bkspc>`` is an MDP whose state is the prompt plus the completion *after* applying the backspaces
(ALGORITHMS.md 3(a)). A trajectory is stored as the physical token stream after the prompt: every emitted token,
including noise tokens (folded into the transition, variant A of 3(a): they are never actions) and ``<bkspc>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

BACKSPACE = "<bkspc>"


def apply_backspaces(tokens: Sequence[int], bkspc_id: int) -> list[int]:
    """The completion that ``tokens`` (a completion's physical stream) leaves: each ``<bkspc>`` deletes the last
    surviving token; a ``<bkspc>`` at an empty completion deletes nothing (the prompt is never deleted)."""
    alive: list[int] = []
    for token in tokens:
        if token == bkspc_id:
            if alive:
                alive.pop()
        else:
            alive.append(token)
    return alive


@dataclass
class Trajectory:
    """One prompt and the physical stream emitted after it.

    Attributes:
        prompt: the prompt's tokens (at least one; BOS alone for unconditional text). Never deleted.
        stream: every token emitted after the prompt, in order: actions (``<bkspc>`` included) and noise tokens.
        is_action: per ``stream`` token, ``True`` for a decision (an expert or model action) and ``False`` for a noise
            token inserted by augmentation, which is part of the transition into the next state, not an action.
    """

    prompt: list[int]
    stream: list[int]
    is_action: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.is_action:
            self.is_action = [True] * len(self.stream)
        if len(self.is_action) != len(self.stream):
            raise ValueError(f"`is_action` has {len(self.is_action)} flags for {len(self.stream)} stream tokens.")
        if not self.prompt:
            raise ValueError("A trajectory needs a non-empty prompt (BOS alone for unconditional text).")

    @property
    def actions(self) -> list[int]:
        """The decisions, in order (noise tokens left out)."""
        return [t for t, a in zip(self.stream, self.is_action) if a]

    def completion(self, bkspc_id: int) -> list[int]:
        """The completion after applying the backspaces."""
        return apply_backspaces(self.stream, bkspc_id)
