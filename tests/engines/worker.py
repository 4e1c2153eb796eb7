"""One engine, every trainer cell: run under ``accelerate launch --config_file <engine>.yaml`` with 2 CPU processes.

For each cell (a trainer, full or LoRA, and its reference source) it trains ``STEPS`` optimizer steps with a
checkpoint at ``SAVE_AT``, resumes a second trainer from that checkpoint to the end, saves the final model, and writes
what the test compares (rank 0, ``<out>/<cell>/result.json``): the engine really built, the logged losses of both
runs, and the trained model's logits on fixed inputs (``logits.pt``) for the reloaded artifact to match.

    accelerate launch --config_file C --num_processes 2 tests/engines/worker.py ENGINE MODEL_DIR OUT CELL [CELL ...]
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402

from tests.engines.cells import BF16_CELLS, CELLS, LOGIT_INPUTS, SAVE_AT  # noqa: E402
from tests.engines.fsdp_cpu import enable_fsdp_on_cpu  # noqa: E402

torch.set_num_threads(1)


def engine_facts(trainer) -> dict:
    """What was really built: accelerate's type, DeepSpeed's stage, whether parameters are partitioned/DTensors."""
    from torch.distributed.tensor import DTensor

    state = trainer.accelerator.state
    params = list(trainer.model_wrapped.parameters())
    facts = {
        "distributed_type": str(state.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        "zero_stage": None,
        "dtensor_params": sum(isinstance(p, DTensor) for p in params),
        "partitioned_params": sum(hasattr(p, "ds_id") for p in params),
        "params": len(params),
    }
    if trainer.is_deepspeed_enabled:
        facts["zero_stage"] = trainer.accelerator.state.deepspeed_plugin.zero_stage
    reference = getattr(getattr(trainer, "reference", None), "ref_model", None)
    if reference is not None:  # a frozen reference model: how it was placed
        ref_params = list(reference.parameters())
        facts["reference_params"] = len(ref_params)
        facts["reference_sharded"] = sum(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in ref_params)
    return facts


def logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


@torch.no_grad()
def trained_logits(trainer, cell) -> torch.Tensor:
    model = trainer.model_wrapped
    was_training = model.training
    model.eval()
    ids = torch.tensor(LOGIT_INPUTS(trainer.processing_class), device=trainer.accelerator.device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().cpu()
    model.train(was_training)
    return out


def run_cell(name: str, engine: str, model_dir: str, out: str) -> None:
    cell = {**CELLS, **BF16_CELLS}[name]
    folder = os.path.join(out, name)
    peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear") if cell.lora else None

    first = cell.trainer(model_dir, cell.args(os.path.join(folder, "run")), peft)
    first.train()
    facts = engine_facts(first)
    first.save_model(os.path.join(folder, "final"))
    logits = trained_logits(first, cell)
    run_logs = logs(first)
    del first

    second = cell.trainer(model_dir, cell.args(os.path.join(folder, "run")), peft)
    second.train(resume_from_checkpoint=os.path.join(folder, "run", f"checkpoint-{SAVE_AT}"))
    resumed = logs(second)
    del second

    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(logits, os.path.join(folder, "logits.pt"))
        with open(os.path.join(folder, "result.json"), "w") as f:
            json.dump({"engine": engine, "facts": facts, "logs": run_logs, "resumed": resumed}, f, indent=1)


def main() -> None:
    engine, model_dir, out, *cells = sys.argv[1:]
    if engine.startswith("fsdp"):
        enable_fsdp_on_cpu()
    for name in cells:
        try:
            run_cell(name, engine, model_dir, out)
        except Exception as error:  # recorded for the test, which names the cell; the next cell still runs
            import traceback

            os.makedirs(os.path.join(out, name), exist_ok=True)
            rank = os.environ.get("RANK", "0")
            with open(os.path.join(out, name, f"error-rank{rank}.txt"), "w") as f:
                f.write(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    import torch.distributed as dist

    if dist.is_initialized():  # a clean exit: gloo groups torn down at interpreter exit sometimes abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
