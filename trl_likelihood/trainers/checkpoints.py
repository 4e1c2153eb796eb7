"""Checkpoints that are complete or refused: what a checkpoint save writes besides the model (the method's state and
settings), which checkpoint a resume may use, and what a failed save says.

transformers writes ``trainer_state.json`` last in a checkpoint save and treats a folder with it as complete; it
pushes ``last-checkpoint`` and rotates old ones right after. Everything here is written before that point, so a
checkpoint that looks complete holds all of it, and a partial one is recognised and skipped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

from accelerate.logging import get_logger
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..method_settings import SETTINGS_FILE, write_method_settings

logger = get_logger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` is not a complete checkpoint (a save killed or out of disk part-way), or ``None``."""
    state = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(state):
        return "no trainer_state.json (its save did not finish)"
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as error:
        return f"trainer_state.json unreadable ({type(error).__name__})"
    if not any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES):
        return "no model weights"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete ``checkpoint-N`` of ``output_dir``; each newer partial one is skipped with a warning that
    names it and why (``resume_from_checkpoint=True`` would otherwise crash on it)."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(name.split("-")[1]), name)
        for name in os.listdir(output_dir)
        if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Skipping the incomplete checkpoint %s: %s. Resuming from an older one.", folder, problem)
    return None


def disk_full_error(folder: str, error: BaseException) -> OSError | None:
    """A clear error for a checkpoint save that failed because the disk is full (torch reports it as a bare
    ``basic_ios::clear: iostream error`` or ``file write failed``), else ``None``."""
    no_space = isinstance(error, OSError) and error.errno == errno.ENOSPC
    try:
        no_space = no_space or shutil.disk_usage(os.path.dirname(folder) or ".").free < 1 << 20
    except OSError:
        pass
    if not no_space:
        return None
    return OSError(
        errno.ENOSPC,
        f"The disk is full: writing the checkpoint {folder} failed ({type(error).__name__}: {error}). That folder is "
        "incomplete; older checkpoints are intact and `resume_from_checkpoint=True` skips it. Free space or set "
        "`save_total_limit`, then resume.",
    )


@contextlib.contextmanager
def state_saved_without_local_paths(state: Any) -> Iterator[None]:
    """``trainer_state.json`` written without ``best_model_checkpoint``, a local absolute path (with the user's name)
    that a push would publish; ``best_global_step`` stays, and ``RestoreBestCheckpoint`` derives the path from it on a
    resume. The live state keeps the path (rotation and ``load_best_model_at_end`` use it)."""
    original = type(state).save_to_json

    def save_public(json_path: str) -> None:
        best = state.best_model_checkpoint
        state.best_model_checkpoint = None
        try:
            original(state, json_path)
        finally:
            state.best_model_checkpoint = best

    state.save_to_json = save_public
    try:
        yield
    finally:
        del state.save_to_json


class RestoreBestCheckpoint(TrainerCallback):
    """On a resume, the best checkpoint's folder from ``best_global_step`` (``trainer_state.json`` holds no path)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.best_model_checkpoint is None and state.best_global_step:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
            if os.path.isdir(folder):
                state.best_model_checkpoint = folder


class CompleteCheckpoints:
    """``resume_from_checkpoint=True`` resumes from the newest *complete* checkpoint, a checkpoint save that runs out
    of disk says so, and a resume with other method settings than the checkpoint's names what changed (e.g. a new
    ``max_steps`` moves DDO's round boundaries)."""

    def method_settings(self) -> dict[str, Any]:
        """What a resume must not change silently: the method's own settings and the step budget."""
        settings = {**self.card_hyperparameters(), "max_steps": self.args.max_steps}
        return {k: v for k, v in settings.items() if isinstance(v, int | float | str | bool | None)}

    def save_checkpoint_extras(self, folder: str) -> None:
        """Files written into every checkpoint right after its model, before it looks complete."""
        if self.args.should_save:
            write_method_settings(folder, self.method_settings())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # next to every saved model: what `ImplicitPRM`/`StepwisePRM` read back
            write_method_settings(output_dir or self.args.output_dir, self.method_settings())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if _internal_call and output_dir and os.path.basename(output_dir).startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            os.makedirs(output_dir, exist_ok=True)
            self.save_checkpoint_extras(output_dir)

    def load_checkpoint_extras(self, folder: str) -> None:
        """Read back what ``save_checkpoint_extras`` wrote, before ``Trainer`` restores the rest of ``folder``."""
        self._warn_on_changed_settings(folder)

    def _warn_on_changed_settings(self, folder: str) -> None:
        path = os.path.join(folder, SETTINGS_FILE)
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        now = self.method_settings()
        changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(saved.keys() | now.keys())
                   if saved.get(k) != now.get(k)]  # fmt: skip
        if changed:
            logger.warning(
                "Resuming from %s with other settings than it was trained with (%s). The run goes on with the new "
                "ones; schedules that depend on them (learning rate, DDO's round boundaries) move.",
                folder,
                "; ".join(changed),
            )

    def save_state(self) -> None:
        with state_saved_without_local_paths(self.state):
            super().save_state()

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if not any(isinstance(c, RestoreBestCheckpoint) for c in self.callback_handler.callbacks):
            self.add_callback(RestoreBestCheckpoint())
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        if resume_from_checkpoint:
            self.load_checkpoint_extras(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        try:
            with state_saved_without_local_paths(self.state):
                super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as error:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            full = disk_full_error(folder, error)
            if full is None:
                raise
            raise full from error


class CheckpointedMethodState:
    """Method state that ``Trainer``'s checkpoints do not hold (DDO's round reference and pool of fakes,
    SequenceMatch's replay buffer).

    It is written inside the checkpoint save, right after the model and before ``trainer_state.json`` (what makes a
    checkpoint look complete), the push of ``last-checkpoint`` and the rotation of old checkpoints; every file is
    written at every save, so a folder reused by another run never keeps a stale one. It is read back on a resume
    (``CompleteCheckpoints.train`` resolves which checkpoint), before ``Trainer`` restores the rest, so that a resumed
    run goes on as an uninterrupted one would; a file missing from the checkpoint is a warning that names what starts
    over.
    """

    def save_method_state(self, folder: str) -> None:
        """Write the state into the checkpoint ``folder`` (every process calls it)."""
        raise NotImplementedError

    def load_method_state(self, folder: str) -> None:
        """Read the state back from the checkpoint ``folder``; warn, naming what is reset, where a file is missing."""
        raise NotImplementedError

    def save_checkpoint_extras(self, folder: str) -> None:
        super().save_checkpoint_extras(folder)
        self.save_method_state(folder)

    def load_checkpoint_extras(self, folder: str) -> None:
        super().load_checkpoint_extras(folder)
        self.load_method_state(folder)
