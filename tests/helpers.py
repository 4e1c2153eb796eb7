"""Small helpers the trainer tests share (one copy of each)."""

from __future__ import annotations

import gc
import os

import yaml
from transformers import PreTrainedModel

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
