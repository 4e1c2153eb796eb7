"""Shorter settings for the SequenceMatch efficacy fixture, several schedules in one run per seed.

    python benchmarks/sequencematch_fixture_schedules.py --seed 0 --warm_steps 800 1000 --arm_steps 200 300
    python benchmarks/sequencematch_fixture_schedules.py --seed 1 --hidden_size 64 --arm_steps 300 400

With a constant learning rate and randomness seeded by the global step (data order, noise, rollouts), the first k
steps of a longer run are the k-step run. So the warm starts are trained once, to the longest ``--warm_steps``, and
saved at each of them; each arm (MLE from the MLE warm start, BC and SM from the BC warm start) is trained once per
warm start, to the longest ``--arm_steps``, and evaluated at each of them (``addition_metrics`` draws from its own
generators, so evaluating does not change the training). Each (warm, arm) cell is what ``sequencematch_vs_bc`` gives
for that schedule, and the fixture's assertions are checked on it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402

from trl_likelihood.lab.backtracking import (  # noqa: E402
    SMSetup,
    addition_task,
    arm_metrics,
    initial_model,
    mle_trainer,
    sequencematch_trainer,
)
from trl_likelihood.lab.experiments import _fit, quiet_logs  # noqa: E402

KINDS = ("first", "later", "two")


def fixture_failures(m: dict[str, dict[str, float]]) -> list[str]:
    """The assertions of ``tests/test_sequencematch_efficacy.py`` that ``m`` (``{"MLE", "BC", "SM"}``) fails."""
    mle, bc, sm = m["MLE"], m["BC"], m["SM"]
    checks = {
        "MLE never backspaces": mle["bkspc_rate_first"] == 0 and mle["recovery_first"] == 0 == mle["recovery_two"],
        "MLE accuracy >= 0.8": mle["accuracy"] >= 0.8,
        "SM later >= MLE + 0.5": sm["recovery_later"] >= mle["recovery_later"] + 0.5,
        "SM first >= MLE + 0.05": sm["recovery_first"] >= mle["recovery_first"] + 0.05,
        "SM two >= MLE + 0.05": sm["recovery_two"] >= mle["recovery_two"] + 0.05,
        "SM bkspc later > 3 clean": sm["bkspc_rate_later"] > 3 * sm["bkspc_rate_clean"],
        "SM accuracy >= BC - 0.05": sm["accuracy"] >= bc["accuracy"] - 0.05,
        **{f"SM {k} >= BC - 0.08": sm[f"recovery_{k}"] >= bc[f"recovery_{k}"] - 0.08 for k in KINDS},
    }
    return [name for name, ok in checks.items() if not ok]


class _At(TrainerCallback):
    """Calls ``fn(step, model)`` at the end of each of ``steps``."""

    def __init__(self, steps, fn) -> None:
        self.steps, self.fn = set(steps), fn

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.fn(state.global_step, model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm_steps", type=int, nargs="+", default=[1000])
    parser.add_argument("--arm_steps", type=int, nargs="+", default=[300])
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_problems", type=int, default=500)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quiet_logs()
    setup = SMSetup(
        seed=args.seed,
        hidden_size=args.hidden_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        eval_problems=args.eval_problems,
    )
    task, tmp = addition_task(setup), tempfile.mkdtemp()

    def train(model, steps: int, callback, sm_weight: float | None):
        if sm_weight is None:
            trainer = mle_trainer(setup, model, f"{tmp}/run", steps, task)
        else:
            trainer = sequencematch_trainer(setup, model, f"{tmp}/run", steps, task, sm_weight)
        return _fit(trainer, callback)

    start = time.process_time()
    for name, weight in (("mle", None), ("bc", 0.0)):
        save = _At(args.warm_steps, lambda step, model, name=name: model.save_pretrained(f"{tmp}/{name}-{step}"))
        train(initial_model(setup, task), max(args.warm_steps), save, weight)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for warm in args.warm_steps:
        for arm, source, weight in (("MLE", "mle", None), ("BC", "bc", 0.0), ("SM", "bc", setup.sm_weight)):

            def evaluate(step, model, warm=warm, arm=arm):
                results.setdefault(f"{warm}+{step}", {})[arm] = arm_metrics(setup, task, model)

            model = AutoModelForCausalLM.from_pretrained(f"{tmp}/{source}-{warm}")
            train(model, max(args.arm_steps), _At(args.arm_steps, evaluate), weight)
    for cell, m in results.items():
        print(f"seed {args.seed} {cell}: fails {fixture_failures(m) or 'nothing'}")
        for arm in ("MLE", "BC", "SM"):
            print(f"  {arm}: " + ", ".join(f"{k} {v:.3f}" for k, v in m[arm].items()))
    print(f"CPU {time.process_time() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
