"""Where the SequenceMatch efficacy fixture's time goes: each stage of ``sequencematch_vs_bc``, wall and CPU time.

    python benchmarks/speed_sequencematch_fixture.py                       # the fixture's setting (seed 0)
    python benchmarks/speed_sequencematch_fixture.py --hidden_size 64 --seed 1 --json out.json

The defaults are ``tests/test_sequencematch_efficacy.py``'s (1,000 warm-start steps, 300 per arm, 500 evaluation
problems, one torch thread). Stages: MLE warm start, BC warm start (and its evaluation), then MLE, BC and SM (each with
its evaluation). CPU time is this process's (``time.process_time``), which on a busy machine is closer to what an idle
one would take than wall time; the load average is printed at the start and the end. The metrics dict is printed (and
written with ``--json``), so that two checkouts can be compared exactly.
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
from studies import setup_from_args  # noqa: E402

from trl_likelihood.lab.backtracking import SMSetup, sequencematch_vs_bc  # noqa: E402
from trl_likelihood.lab.experiments import quiet_logs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm_steps", type=int, default=1000)
    parser.add_argument("--arm_steps", type=int, default=300)
    parser.add_argument("--eval_problems", type=int, default=500)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the metrics and stage times here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_logs()
    setup = setup_from_args(SMSetup, args)  # every flag named as an SMSetup field
    print(f"load average at start: {os.getloadavg()}", flush=True)
    stages, last = [], [time.perf_counter(), time.process_time()]

    def on_arm(name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        stages.append({"stage": name, "wall_s": wall - last[0], "cpu_s": cpu - last[1]})
        last[:] = [wall, cpu]
        print(f"{name}: wall {stages[-1]['wall_s']:.1f} s, CPU {stages[-1]['cpu_s']:.1f} s", flush=True)

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = sequencematch_vs_bc(setup, tmp, on_arm=on_arm)["metrics"]
    total = {"wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu}
    print(f"total: wall {total['wall_s']:.1f} s, CPU {total['cpu_s']:.1f} s")
    print(f"load average at the end: {os.getloadavg()}")
    print({arm: {k: round(v, 3) for k, v in m.items()} for arm, m in metrics.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": vars(args), "stages": stages, "total": total, "metrics": metrics}, f, indent=1)


if __name__ == "__main__":
    main()
