"""Test-only: real FSDP2 on CPU processes (gloo).

accelerate 1.16 turns an FSDP plugin into FSDP only for GPU-type process groups; on CPU it silently trains with DDP.
This re-types a MULTI_CPU state that holds an FSDP plugin as FSDP, so ``Accelerator.prepare`` calls ``fully_shard``
(parameters become DTensors) exactly as on GPUs. It belongs here, never in the package: on GPUs nothing is needed.
"""

from __future__ import annotations

import functools


def enable_fsdp_on_cpu() -> None:
    """Patch ``AcceleratorState.__init__`` once; call before the first ``Accelerator`` (i.e. before the Trainer)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if getattr(AcceleratorState.__init__, "_fsdp_on_cpu", False):
        return
    original = AcceleratorState.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            if self._mixed_precision != "no":
                plugin.set_mixed_precision(self._mixed_precision)
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init._fsdp_on_cpu = True
    AcceleratorState.__init__ = init
