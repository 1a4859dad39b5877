"""Data-parallel training under ``torchrun`` (DDP): process group, device, and small collectives.

``dctps train`` started as ``torchrun --nproc_per_node N -m dctps.cli train ...`` sees the
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables, joins a process group (``nccl``
on CUDA, ``gloo`` on CPU), trains a ``DistributedDataParallel`` model on its shard of each global
batch (per-rank batch = global batch / world size), and only rank 0 writes the results store and
checkpoints. Without those variables everything here is a no-op for one process.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dctps.errors import DctpsError, no_cuda, one_line

__all__ = ["DistContext", "setup", "teardown"]


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        """True when running with more than one process (DDP)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints, the store and progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped in DDP when distributed (parameters broadcast from rank 0)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks (in place; returned)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool | torch.Tensor) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        t = torch.as_tensor(flag, dtype=torch.float32, device=self.device).reshape(1).clone()
        return bool(self.all_reduce_sum(t).item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def broadcast_buffers(self, model: nn.Module) -> None:
        """Overwrite every rank's saved buffers of ``model`` with rank 0's (a no-op without DDP).

        DDP copies rank 0's buffers (BatchNorm running statistics) to the other ranks only at the
        start of a training forward, so after the last step of an epoch each rank holds statistics
        updated by its own batch. An evaluation summed over ranks would then report a mixture of
        models, none of them the one rank 0 saves. Only buffers in ``state_dict`` are sent: the
        non-persistent ones are rebuilt or recomputed the same on every rank, and can be large.
        """
        if not self.enabled:
            return
        saved = set(model.state_dict().keys())
        bufs = [b for name, b in model.named_buffers() if name in saved]
        # one broadcast per dtype and device instead of one per buffer (ResNet50: 160 buffers)
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for b in bufs:
            groups.setdefault((b.dtype, b.device), []).append(b)
        for group in groups.values():
            flat = torch.cat([b.reshape(-1) for b in group])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in group:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def barrier(self) -> None:
        """Wait for every rank (a no-op without DDP)."""
        if self.enabled:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()


def launched_world_size() -> int:
    """The process count ``torchrun`` launched this process among (``WORLD_SIZE``; 1 without
    it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def reporting_rank() -> bool:
    """Whether this process prints a command's result: rank 0 under ``torchrun`` with several
    processes, else always (a stray ``RANK`` without ``WORLD_SIZE`` is one process, which
    printed nothing)."""
    if launched_world_size() <= 1:
        return True
    return os.environ.get("RANK", "0") == "0"


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DctpsError(no_cuda(f"device {pref!r}", "give device cpu or auto"))
        return torch.device(pref if ":" in pref else f"cuda:{local_rank}")
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def device_kind(device: str) -> str:
    """The kind of device (``'cpu'``, ``'cuda'``) that :func:`setup` picks for ``device``, which
    decides the process group's backend."""
    return _pick_device(device, 0).type


def setup(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1``, else one local process.

    ``device`` (``auto | cpu | cuda | cuda:N``) picks the device; under ``torchrun`` CUDA ranks use
    ``cuda:LOCAL_RANK`` and the ``nccl`` backend, CPU ranks ``gloo``.
    """
    world = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world <= 1:
        return DistContext(device=_pick_device(device, 0))
    dev = _pick_device("cuda" if device.startswith("cuda") else device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
        except (ValueError, RuntimeError) as e:  # e.g. WORLD_SIZE set by hand, no MASTER_ADDR
            raise DctpsError(
                f"cannot join the process group of {world} processes as rank {rank} "
                f"({one_line(e)}); launch the command with torchrun, or unset WORLD_SIZE to "
                "run one process"
            ) from None
        owns = True
    return DistContext(rank, world, local, dev, owns)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        # DDP's reducer keeps the process group alive; in a reference cycle it is freed only at
        # interpreter exit, where destroying gloo's worker threads aborted a rank now and then
        # ("terminate called without an active exception", after the run had finished): free it
        # while the interpreter still runs
        gc.collect()
        dist.destroy_process_group()
        ctx.owns_group = False
