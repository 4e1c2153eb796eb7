"""Offline fixtures: a tiny causal LM and a byte-level BPE tokenizer, built once per run and loaded back by path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from tests.tiny import CORPUS, build_tiny_model  # noqa: E402

# Tiny models: a second OpenMP thread only adds synchronisation (and spin-waits on a loaded machine).
torch.set_num_threads(1)


# The longest modules (a shared module-scoped experiment, or many subprocesses), longest first; then the other modules
# with slow tests. Under ``-n 2 --dist loadscope`` (the README's command) a module runs whole on one worker, in this
# order, so the two workers finish close together; a serial run only changes order.
LONGEST_FIRST = (
    "test_engines",
    "test_sequencematch_efficacy",
    "test_notebooks",
    "test_ddo_efficacy",
    "test_demo",
    "test_implicit_prm_efficacy",
    "test_reliability_distributed",
    "test_mixce_efficacy",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return (
            (LONGEST_FIRST.index(name), 0)
            if name in LONGEST_FIRST
            else (len(LONGEST_FIRST), item.module.__name__ not in slow)
        )

    items.sort(key=rank)  # stable: tests keep their order inside a module


# Every test should take at most a third of its timeout on an idle 2-core machine, so that a loaded CI host (3x slower)
# still finishes it. The run's summary names those that took longer (setup, call and teardown together; a module
# fixture counts in its first test).
_SPENT: dict[str, list[float]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else float(item.config.getini("timeout") or 0)
    outcome = yield
    outcome.get_result().user_properties.append(("timeout", timeout))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    timeout = dict(report.user_properties).get("timeout", 0.0)
    spent = _SPENT.setdefault(report.nodeid, [0.0, timeout])
    spent[0] += report.duration


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    slow = sorted((s, t, n) for n, (s, t) in _SPENT.items() if t and s > t / 3)
    if slow:
        terminalreporter.section("tests over a third of their timeout")
        for spent, timeout, nodeid in reversed(slow):
            terminalreporter.write_line(f"{spent:7.1f} s of {timeout:.0f} s  {nodeid}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny Qwen2 model and its tokenizer: tests load them with ``from_pretrained(path)``."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-qwen2")))


@pytest.fixture
def lm_dataset() -> Dataset:
    """Standard language-modeling data (TRL's ``text`` format)."""
    return Dataset.from_dict({"text": CORPUS[:24]})


@pytest.fixture
def prompt_completion_dataset() -> Dataset:
    rows = [s.split(" ", 3) for s in CORPUS[:24]]
    return Dataset.from_dict(
        {"prompt": [" ".join(r[:3]) for r in rows], "completion": [" " + r[3] if len(r) > 3 else " ." for r in rows]}
    )


@pytest.fixture
def conversational_dataset() -> Dataset:
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": s[:20]}, {"role": "assistant", "content": s[20:] or "ok"}]
                for s in CORPUS[:24]
            ]
        }
    )


def cpu_args(**overrides) -> dict:
    """Training arguments that keep a test fast and deterministic on 2 CPU cores."""
    base = dict(
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        learning_rate=1e-2,
        seed=0,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_length=64,
        dataloader_num_workers=0,
    )
    base.update(overrides)
    return base
