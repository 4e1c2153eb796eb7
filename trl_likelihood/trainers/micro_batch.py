"""Which micro-batch of an optimizer step a call is: the key of per-micro-batch randomness."""

from __future__ import annotations

from collections.abc import Hashable


class MicroBatchIndex:
    """The index of a call among consecutive calls with the same key, e.g. ``(mode, global_step)``: which micro-batch
    of an optimizer step this is. Seeds per-micro-batch randomness so a resumed run draws what an uninterrupted one
    would (the count restarts at 0 whenever the key changes, as at a resume)."""

    def __init__(self) -> None:
        self._key: Hashable = None
        self._index = 0

    def __call__(self, key: Hashable) -> int:
        self._index = self._index + 1 if key == self._key else 0
        self._key = key
        return self._index

    def reset(self) -> None:
        """Count from 0 again (each evaluation draws the same randomness for the same data at the same step)."""
        self._key = None
