"""What every quickstart shares: cell constructors, the setup cell, the CPU training arguments, the card cells.

A quickstart module (one per method) defines ``QUICKSTART = Quickstart(...)`` with its cells; ``notebooks/build.py``
writes the notebooks and ``tests/test_notebooks.py`` executes them and checks what ``Quickstart`` promises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from textwrap import dedent

from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell


@dataclass(frozen=True)
class Quickstart:
    """One notebook: its cells, and what ``tests/test_notebooks.py`` expects it to leave in its working directory."""

    name: str  # file stem in notebooks/
    cells: Callable[[], list[NotebookNode]]
    card: str  # the model card it saves, relative to its working directory
    tag: str  # the method's tag in that card's metadata
    expect: tuple[str, ...] = ()  # text its outputs must show (e.g. the rows of a results table)


def md(text: str) -> NotebookNode:
    return new_markdown_cell(dedent(text).strip())


def code(text: str) -> NotebookNode:
    return new_code_cell(dedent(text).strip())


SETUP = """
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is built locally: nothing is downloaded

%matplotlib inline
import datasets
import matplotlib.pyplot as plt
import pandas as pd
import torch
import transformers

torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
datasets.disable_progress_bars()  # keep the outputs to the trainers' progress and the results
transformers.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated")  # renamed in transformers 5.2x
"""


def setup_cell(imports: str) -> NotebookNode:
    """The first code cell of every quickstart: offline, one thread, inline plots, then the method's imports."""
    return code(SETUP + dedent(imports))


def cpu_args_cell(steps: int, max_length: str, learning_rate: str = "3e-3") -> NotebookNode:
    """Training arguments shared by every arm (a tiny model on a CPU, deterministic, no checkpoints) and ``logged``."""
    return code(
        f"""
        steps = {steps}  # of the method and of its control: seconds on a CPU; more show the effect more clearly
        cpu = dict(
            per_device_train_batch_size=64,
            learning_rate={learning_rate},
            lr_scheduler_type="constant",  # every arm keeps moving until its last step
            max_length={max_length},
            logging_steps=10,
            seed=0,  # the same data order in every arm
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            gradient_checkpointing=False,  # SFTConfig turns it on; at this size it only recomputes the forward
        )


        def logged(trainer):
            \"\"\"The training log as a table, one row per logging step.\"\"\"
            return pd.DataFrame([h for h in trainer.state.log_history if "loss" in h]).set_index("step")
        """
    )


def card_cells(trainer: str, folder: str) -> list[NotebookNode]:
    """Save the model and show the head of the card that ``save_model()`` writes next to it."""
    return [
        md(
            """
            ## Save with a model card

            `save_model()` writes the weights, the tokenizer and a model card (`README.md`): the method, its
            hyperparameters, the citations and a quick start that loads this folder. `push_to_hub()` uploads the
            same folder.
            """
        ),
        code(
            f"""
            {trainer}.save_model()
            card = open("{folder}/README.md").read()
            print(card[: card.index("\\n## ")])  # metadata, title, summary; then usage, settings, citations
            """
        ),
    ]
