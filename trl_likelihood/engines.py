"""Weights under whichever engine accelerate built: DDP, DeepSpeed ZeRO-2/3 or FSDP2.

The methods here touch weights outside the training step: a frozen reference model, DDO's round snapshots and saved
references, SequenceMatch's new ``<bkspc>`` rows, sampling. Under ZeRO-3 a parameter holds only this rank's partition
(an empty tensor outside a gather) and under FSDP2 a ``DTensor`` shard, so plain ``clone``/``copy_``/``deepcopy`` would
read or write one rank's piece, or nothing. These helpers read and write full tensors on every rank, and prepare a
frozen model the way TRL's ``DPOTrainer`` prepares its ``ref_model``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from . import _compat


def is_partitioned(param: torch.Tensor) -> bool:
    """A DeepSpeed ZeRO-3 parameter (its data is this rank's partition outside a gather)."""
    return hasattr(param, "ds_id")


def is_dtensor(param: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(param, DTensor)


def full_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's full shape (a ZeRO-3 partition's ``shape`` is ``(0,)``)."""
    return param.ds_shape if is_partitioned(param) else param.shape


def decodes_in_lockstep(accelerator: Any) -> bool:
    """FSDP: every forward gathers parameters with collectives, so during sampling the processes must run the same
    number of forwards (``sync_ranks``). ZeRO-3 gathers the weights once per sampling phase instead
    (``sampling_weights``)."""
    return getattr(accelerator.state, "fsdp_plugin", None) is not None


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modify: bool = False) -> Iterator[None]:
    """ZeRO-3 parameters hold their full tensors inside; with ``modify``, what rank 0 writes is kept (every rank must
    write the same). Other parameters are untouched (use ``read_full``/``write_full`` for DTensors)."""
    zero = [p for p in params if is_partitioned(p)]
    if not zero:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero, modifier_rank=0 if modify else None):
        yield


@torch.no_grad()
def read_full(param: torch.Tensor) -> torch.Tensor:
    """A copy of the parameter's full tensor, on every rank (a collective under ZeRO-3 and FSDP2)."""
    if is_partitioned(param):
        with gathered([param]):
            return param.detach().clone()
    if is_dtensor(param):
        return param.full_tensor().detach().clone()
    return param.detach().clone()


@torch.no_grad()
def write_full(param: torch.Tensor, value: torch.Tensor) -> None:
    """Set the parameter to the full tensor ``value`` (the same on every rank), each rank keeping its own shard."""
    if is_partitioned(param):
        with gathered([param], modify=True):
            param.copy_(value)
    elif is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        param.copy_(distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements))
    else:
        param.copy_(value)


@torch.no_grad()
def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Load ``source``'s parameters into ``target`` (same architecture), parameter by parameter: never the whole model
    gathered at once."""
    targets = dict(target.named_parameters())
    for name, param in source.named_parameters():
        write_full(targets[name], read_full(param))


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's full tensor, on the CPU (what a checkpoint of a frozen reference holds)."""
    return {name: read_full(p).cpu() for name, p in module.named_parameters()}


def load_full_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    for name, value in state.items():
        write_full(params[name], value.to(params[name].device))


def full_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with full weights: a deep copy, or under ZeRO-3 (a model loaded partitioned) a new
    model of the same class filled from the gathered weights; ``prepare_frozen`` shards it again."""
    if not any(is_partitioned(p) for p in model.parameters()):
        ref = copy.deepcopy(model)
    else:
        with gathered(list(model.parameters())):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ref = type(model)(model.config)  # plain construction: not under DeepSpeed's zero.Init, so not partitioned
        ref.load_state_dict(state)
        ref.to(next(iter(state.values())).dtype)
    return ref


def prepare_frozen(model: torch.nn.Module, accelerator: Any) -> torch.nn.Module:
    """Place a frozen model for the engine, as ``DPOTrainer`` does its ``ref_model``: a DeepSpeed inference engine
    (sharded under ZeRO-3, a replica at stage 0 otherwise, in DeepSpeed's precision), FSDP2's ``fully_shard``, or the
    plain model on the device."""
    state = accelerator.state
    if getattr(state, "deepspeed_plugin", None) is not None:
        return _compat.prepare_deepspeed(model, accelerator)
    if getattr(state, "fsdp_plugin", None) is not None:
        return _compat.prepare_fsdp(model, accelerator)
    return model.to(accelerator.device)


@contextlib.contextmanager
def sampling_weights(model: torch.nn.Module, accelerator: Any) -> Iterator[None]:
    """A sampling phase of ``model`` (the engine-wrapped model). Under ZeRO-3 every parameter is gathered once for the
    phase and DeepSpeed's hooks are off (TRL's generation helper), so the many small decoding forwards run no
    collective and leave DeepSpeed's record of the training forward intact. Other engines are unchanged; under FSDP2
    the samplers keep the processes in step instead (``sync_ranks``)."""
    if not any(is_partitioned(p) for p in model.parameters()):
        yield
        return
    with _compat.unwrap_model_for_generation(model, accelerator):
        yield


def initialize_fsdp(model: torch.nn.Module) -> None:
    """Run FSDP2's lazy initialisation now, if ``model`` is an FSDP2 root that has not run a forward yet.

    FSDP2 fixes the dtype it reduces gradients in from the parameters that require grad at the first forward. PEFT's
    ``disable_adapter`` turns ``requires_grad`` off on the adapter, so a first forward with the adapter disabled (DDO's
    round-1 fakes) would leave bf16 gradients of fp32 parameters unconverted (torch 2.13; private ``_lazy_init``).
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()


def all_ranks(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on every process (a collective when a process group is up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
