"""Data-parallel training over the processes that ``accelerate launch`` starts (one per GPU, or CPU processes on gloo).

The algorithm is DDP's: every process holds the same weights (rank 0's are broadcast at the start), takes every
``size``-th batch of the epoch, and before each optimizer step the gradients are averaged over the processes with
one all-reduce, so every process applies the same update. The all-reduce runs in the shared training loop rather
than inside a ``DistributedDataParallel`` wrapper because the loop does not own the models' forward passes (each
task computes its own loss); the result is the same as DDP's, which the two-process test checks against
single-process gradient accumulation. Rank 0 validates, checkpoints and logs; the others follow its decisions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device | None = None  # this process's device when launched (cuda:LOCAL_RANK), else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_size() -> int:
    """How many processes the launcher started (1 outside ``accelerate launch`` / ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_world(device_name: str = "auto") -> World:
    """Join the process group of an ``accelerate launch`` run: nccl on CUDA, gloo on CPU (``training.device=cpu``
    or no GPU). Outside a launch this is the single-process world."""
    if launched_size() <= 1:
        return World()
    from accelerate import PartialState

    use_cpu = device_name == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    device = torch.device("cpu") if use_cpu else torch.device(state.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return World(state.process_index, state.num_processes, device)


def current_world() -> World:
    """The world this process already joined (``init_world``), or the single-process one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Everyone starts from rank 0's weights (as DDP does at construction)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    for tensor in module.state_dict().values():
        dist.broadcast(tensor.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Replace each gradient by its mean over the processes, in one flat all-reduce (a missing gradient counts as
    zero: a process whose share of the epoch ran out still takes part in the last step)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_process(flag: bool, world: World, device: torch.device) -> bool:
    """True when ``flag`` holds on at least one process (the group agrees on whether to take another step)."""
    if not world.distributed:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_processes(values: list[float], world: World, device: torch.device) -> list[float]:
    if not world.distributed:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_main(obj: Any, world: World, device: torch.device) -> Any:
    """Rank 0's JSON-able ``obj`` on every process (validation metrics, so that all stop at the same epoch). Sent
    as JSON bytes, not pickled."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    data = json.dumps(obj).encode("utf-8") if world.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if world.is_main:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode("utf-8"))
