"""What the quickstarts share: cell constructors, the setup cell, the CPU training arguments, the card cells, and
the SFT control and exact metrics of the two bigram quickstarts (MixCE, DDO).

A quickstart module (one per method) defines ``QUICKSTART = Quickstart(...)`` with its cells; ``notebooks/build.py``
writes the notebooks and ``tests/test_notebooks.py`` executes them and checks what ``Quickstart`` promises. The
shared cells are written here once but land in each notebook in full, so every notebook still reads top to bottom.
"""

from __future__ import annotations

import json
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


# The bigram quickstarts' exact metrics (lower is better); the bar chart shows the two about impossible tokens.
BIGRAM_BARS = {"zero_mass": "mass on impossible tokens", "invalid_rate": "invalid-sample rate"}


def sft_control_cell(start: str) -> NotebookNode:
    """The control arm ``mle``: more SFT from the folder ``start``, with the method's steps, data and arguments."""
    return code(
        f"""
        args = SFTConfig("mle", max_steps=steps, **cpu)
        mle = SFTTrainer("{start}", args=args, train_dataset=dataset, processing_class=tokenizer)
        mle.train();
        """
    )


def bigram_truth_cells(arms: dict[str, str], bars: tuple[str, str], left_panel: str) -> list[NotebookNode]:
    """The table ``exact`` of ``bigram_metrics`` per arm, then a figure: the method's curve left, ``bars`` right.

    Args:
        arms: row label -> trainer variable, in table order.
        bars: the two ``BIGRAM_BARS`` keys, in the order of the table's first columns and of the bars.
        left_panel: code that draws the method's training curve on the axes ``left``.
    """
    rows = ", ".join(f"{json.dumps(label)}: {trainer}" for label, trainer in arms.items())
    names = {key: BIGRAM_BARS[key] for key in bars}
    table = code(
        f"""
        arms = {{{rows}}}
        exact = {{name: bigram_metrics(t.model, task, 500, 1000, seed=1000) for name, t in arms.items()}}
        exact = pd.DataFrame(exact).T[{json.dumps([*bars, "nll", "js"])}]
        exact
        """
    )
    figure = [
        "fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))",
        dedent(left_panel).strip(),
        f"names = {json.dumps(names)}",
        "exact[list(names)].rename(columns=names).plot.bar(ax=right, rot=0)",
        'right.set(ylabel="lower is better", title="Against the true distribution")',
        "fig.tight_layout()",
    ]
    return [table, code("\n".join(figure))]
