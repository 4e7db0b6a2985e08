"""DDP under ``torchrun``: process-group setup from RANK/LOCAL_RANK/WORLD_SIZE, rank-0 helpers, mask
broadcast once per pruning event, and DDP wrapping that keeps the mask buffers out of DDP's buffer sync
(DDP would otherwise broadcast every mask from rank 0 at every forward; other buffers, BN statistics, sync
as usual).

Teardown is collective: ``destroy_distributed`` frees what still holds the process group (DDP reducers in
reference cycles), waits for every rank at a barrier and only then destroys the group. A rank that tears
gloo down while its peer is still exiting, or lets the interpreter destroy a group that a DDP reducer still
holds, dies with SIGABRT ("terminate called without an active exception") after a successful run."""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lth_kernels.training.masks import masked_modules


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the one process that writes files, logs and shows progress."""
    return rank() == 0


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def init_distributed(backend: str | None = None, device: str | torch.device | None = None) -> DistInfo:
    """Initialise the default process group when launched by torchrun with WORLD_SIZE > 1 (gloo on CPU,
    nccl on GPU); a no-op otherwise. Returns this process's rank, world size and device."""
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    lr = local_rank()
    dev = torch.device(f"cuda:{lr}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if _launched() and not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=backend)
        # a script that never calls destroy_distributed still frees the group before interpreter teardown
        # (no barrier there: after an exception the other ranks may be inside a collective)
        atexit.register(destroy_distributed, sync=False)
    be = dist.get_backend() if dist.is_initialized() else None
    return DistInfo(rank(), lr, world_size(), dev, be)


def destroy_distributed(sync: bool = True) -> None:
    """Tear the default process group down (a no-op when there is none). ``sync``: every rank first meets
    at a barrier, so no rank closes its connections while a peer still uses them; pass ``False`` on an
    error path, where the other ranks may never reach it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # DDP reducers sit in reference cycles and hold the group: free them while it is alive
    if sync and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def broadcast_masks(model: nn.Module, src: int = 0) -> int:
    """Make every rank's masks equal to rank ``src``'s (call once after each pruning event, masks decided on
    rank ``src``). Masks go through ``set_mask`` when the module has one, so cached metadata is refreshed
    and the weights are re-zeroed. Returns the number of masks broadcast."""
    mods = masked_modules(model)
    if not is_distributed():
        return len(mods)
    for _, m in mods:
        buf = m.mask.to(torch.uint8)  # gloo does not broadcast bool
        dist.broadcast(buf, src=src)
        new = buf.to(m.mask.dtype)
        if hasattr(m, "set_mask"):
            m.set_mask(new)
        else:
            m.mask.copy_(new)
            m.weight.mul_(new.to(m.weight.dtype))
    return len(mods)


def mask_buffer_names(model: nn.Module) -> list[str]:
    """The fully qualified names of the mask buffers (``<layer>.mask``) of ``model``."""
    return [f"{name}.mask" if name else "mask" for name, _ in masked_modules(model)]


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap for multi-rank runs (identity otherwise). Parameters and buffers are broadcast from rank 0 at
    wrap time and buffers at every forward, as DDP does, except the masks: DDP is told to ignore them (they
    move with ``broadcast_masks``, once per pruning event). This replaces ``broadcast_buffers=False``
    (deprecated in torch 2.13, and it also stopped BN statistics from syncing) and works on every torch
    this package supports."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    names = mask_buffer_names(model)
    if names:
        ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", ())) | set(names)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignored))
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
