"""Data-parallel training under torchrun, and the batch splitting it shares with gradient accumulation.

`torchrun --standalone --nproc_per_node N -- main.py ...` sets WORLD_SIZE > 1 (the `--` keeps
torchrun's parser from reading a flag such as `--p` as an abbreviation of one of its own). Every rank
builds the same task (same seed, same data), the model is wrapped in DistributedDataParallel, and rank
r trains on its slice of each step's global batch, so the global batch (and the step's gradient) is
the same as on one process. DDP all-reduces the gradients during backward; the Grokfast filter runs
after backward, so every rank filters the same averaged gradients and holds the same filter state.
Evaluation is not sharded (every rank evaluates everything, identically); only rank 0 writes the run
folder. Ranks read checkpoints from the run folder, so they must share a filesystem (one host).
"""
import contextlib
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn

from repro.errors import UserError

POLL_STEPS = 20  # steps between the ranks' agreement on Ctrl-C / time-based flushes (a host sync)


class Distributed:
    """This process's place in the group, and the few collectives the engine needs."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model`; buffers are not broadcast (every rank computes the same ones)."""
        ids = [self.device] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        no_sync_kwarg = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                         else "broadcast_buffers")  # renamed in recent torch
        return ddp(model, device_ids=ids, **{no_sync_kwarg: False})

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the ranks (one small all-reduce, a host sync)."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def barrier(self) -> None:
        dist.barrier()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available (use --device cpu)")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} requested but this machine has {torch.cuda.device_count()} "
                            f"CUDA device(s)")
        # a named GPU becomes the current one: CUDA-graph capture and the epoch batches' side stream
        # create their streams on the current GPU, which would otherwise stay GPU 0
        torch.cuda.set_device(device)
    return device


def setup(device_name: str) -> tuple[torch.device, Distributed | None]:
    """The device this process trains on (--device), and its place in the process group torchrun
    describes in the environment (gloo on CPU, NCCL on CUDA); on CUDA each rank takes the GPU of its
    LOCAL_RANK unless the device names one."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return device, None
    rank = int(os.environ.get("RANK", "0"))
    if device.type == "cuda" and device.index is None:  # a named GPU is current already (resolve_device)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as exc:  # e.g. WORLD_SIZE set by hand without MASTER_ADDR
            raise UserError(f"cannot join the torch.distributed group (use torchrun): "
                            f"{(str(exc).splitlines() or [''])[0]}") from None
    return device, Distributed(rank, world_size, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def micro_batches(batch: torch.Tensor, dim: int, accum_steps: int, rank: int = 0,
                  world_size: int = 1) -> list[tuple[torch.Tensor, float]]:
    """This rank's micro-batches of a global batch, each with the weight of its (mean) loss.

    The global batch of n examples (along `dim`) is cut into world_size shards, and this rank's
    shard into accum_steps micro-batches. A micro-batch of m examples gets weight m / n * world_size:
    summed over the micro-batches and averaged over the ranks (DDP averages), the weighted mean losses
    give exactly the gradient of the global batch's mean loss, even when the cuts are unequal. An empty
    micro-batch (a short last batch of an epoch) becomes one example with weight 0, so that every
    rank still runs accum_steps backward passes (DDP's collectives must match).
    """
    n = batch.shape[dim]
    shard = torch.tensor_split(batch, world_size, dim=dim)[rank]
    parts = []
    for chunk in torch.tensor_split(shard, accum_steps, dim=dim):
        m = chunk.shape[dim]
        parts.append((chunk, m / n * world_size) if m else (batch.narrow(dim, 0, 1), 0.0))
    return parts


def no_sync(model: nn.Module, sync: bool):
    """DDP's no_sync() for all but the last micro-batch: gradients are all-reduced once per update."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
