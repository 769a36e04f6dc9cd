"""The one training loop every model uses.

Epochs with a progress bar, gradient clipping, bf16 autocast on CUDA, validation after each epoch, early stopping
on a validation metric with patience, the best weights kept as a real copy, and a checkpoint after every epoch
(model, optimizer, scheduler, RNG states, history) from which an interrupted run resumes to the same result as an
uninterrupted one. Batch order comes from ``numpy.random.default_rng([seed, epoch])``, so it does not depend on
how many epochs ran in this process. ``gradient_accumulation_steps`` > 1 sums the gradients of that many batches
(each loss divided by it) before one optimizer step; an epoch's leftover batches get a step of their own.
Under ``accelerate launch`` the same loop trains data-parallel (``recsys_core.distributed``): each process takes
every world-size-th batch and the gradients are averaged before each step, so N processes with accumulation A
make the same updates as one process with accumulation N*A; rank 0 validates, checkpoints and runs the callbacks.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_core import distributed
from recsys_core.io import atomic_path
from recsys_core.metrics import monitored_value

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass
class LoopSettings:
    epochs: int
    lr: float
    patience: int
    monitor: str = "ndcg_at_10"
    grad_clip: float = 5.0
    mixed_precision: bool = True
    seed: int = 42
    batch_size: int = 512
    resume: bool = True
    checkpoint_dir: Path | None = None
    fingerprint: str = ""  # config + data identity; a checkpoint with another fingerprint is not resumed
    gradient_accumulation_steps: int = 1  # optimizer step every this many batches (and after an epoch's last one)
    batch_order: str = "random"  # sliding-window retrievers: "random" or "length" (batching.epoch_batches)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    stopped_early: bool = False
    resumed_from: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "stopped_early": self.stopped_early,
            "resumed_from": self.resumed_from,
        }


class TrainTask(Protocol):
    """What a model gives the loop."""

    model: torch.nn.Module

    def optimizer(self, lr: float) -> torch.optim.Optimizer: ...

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Any]: ...

    def loss(self, batch: Any) -> torch.Tensor: ...

    def validate(self) -> dict[str, float]: ...


EpochCallback = Callable[[int, dict[str, float]], None]


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A real copy of the weights (a state_dict alone would keep pointing at the live tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    task: TrainTask,
    settings: LoopSettings,
    device: torch.device,
    callbacks: Sequence[EpochCallback] = (),
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> History:
    """Train ``task.model`` and leave it holding the best validation weights."""
    model = task.model
    optimizer = task.optimizer(settings.lr)
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    history = History()
    best_state = _cpu_copy(model)
    bad_epochs, start = 0, 1
    seed_everything(settings.seed)

    ckpt_path = settings.checkpoint_dir / CHECKPOINT if settings.checkpoint_dir else None
    if ckpt_path is not None and settings.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") != settings.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to another configuration or dataset", ckpt_path)
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None and ckpt.get("scheduler") is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            best_state = ckpt["best_state"]
            bad_epochs = ckpt["bad_epochs"]
            history = History(**ckpt["history"])
            history.resumed_from = ckpt["epoch"]
            start = ckpt["epoch"] + 1
            _set_rng_state(ckpt["rng"])
            log.info("resumed from %s after epoch %d (best epoch %d)", ckpt_path, ckpt["epoch"], history.best_epoch)
            for record in history.epochs:  # the new run shows the whole curve
                for cb in callbacks:
                    cb(int(record["epoch"]), record)
            # a run that stopped early goes on when resumed with a longer patience (or more epochs)
            history.stopped_early = bad_epochs >= settings.patience
            if history.stopped_early:
                start = settings.epochs + 1

    use_amp = settings.mixed_precision and device.type == "cuda"
    accumulate = max(1, int(settings.gradient_accumulation_steps))
    world = distributed.current_world()
    distributed.broadcast_parameters(model, world)
    for epoch in range(start, settings.epochs + 1):
        began, cpu_began = time.perf_counter(), time.process_time()
        model.train()
        rng = np.random.default_rng([settings.seed, epoch])
        losses = []
        # every process draws the same batches from the same rng and keeps its share of them
        mine = (b for i, b in enumerate(task.batches(epoch, rng)) if i % world.size == world.rank)
        bar = tqdm(mine, desc=f"epoch {epoch}/{settings.epochs}", leave=False, unit="batch",
                   disable=not world.is_main)  # fmt: skip
        batches = iter(bar)
        optimizer.zero_grad(set_to_none=True)
        while True:
            pending = 0  # batches whose gradients are accumulated but not yet applied
            for batch in itertools.islice(batches, accumulate):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = task.loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {epoch}: the training loss is {loss.item()}; lower the "
                                             "learning rate")  # fmt: skip
                (loss / accumulate if accumulate > 1 else loss).backward()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
                pending += 1
            # all processes step together; one whose share ran out contributes zero gradients
            if not distributed.any_process(pending > 0, world, device):
                break
            distributed.average_gradients([p for p in model.parameters() if p.requires_grad], world)
            _step(model, optimizer, scheduler, settings.grad_clip)
        bar.close()
        train_seconds = time.perf_counter() - began
        train_cpu_seconds = time.process_time() - cpu_began  # this process's CPU time: every thread, no waiting
        model.eval()
        val = None
        if world.is_main:
            with torch.no_grad():
                val = task.validate()
        val = distributed.from_main(val, world, device)
        loss_sum, loss_count = distributed.sum_over_processes([float(np.sum(losses)), float(len(losses))], world,
                                                              device)  # fmt: skip
        record = {
            "epoch": float(epoch),
            "train_loss": loss_sum / loss_count if loss_count else math.nan,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "epoch_seconds": train_seconds,
            "epoch_cpu_seconds": train_cpu_seconds,
            "eval_seconds": time.perf_counter() - began - train_seconds,
            **{f"val_{k}": v for k, v in val.items()},
        }
        history.epochs.append(record)
        score = monitored_value(val, settings.monitor)
        if score > history.best_score:
            history.best_score, history.best_epoch, bad_epochs = score, epoch, 0
            best_state = _cpu_copy(model)
        else:
            bad_epochs += 1
        log.info("epoch %d: loss %.4f, val %s %.4f (best %.4f at epoch %d)", epoch, record["train_loss"],
                 settings.monitor, score, history.best_score, history.best_epoch)  # fmt: skip
        if bad_epochs >= settings.patience:
            history.stopped_early = True
        if ckpt_path is not None and world.is_main:
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, best_state, bad_epochs, history, epoch, settings)
        for cb in callbacks if world.is_main else ():
            cb(epoch, record)
        if history.stopped_early:
            log.info("early stopping after epoch %d: no gain in %d epochs", epoch, settings.patience)
            break
    model.load_state_dict(best_state)
    return history


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, grad_clip: float) -> None:
    """Apply the accumulated gradients (clipped), advance the scheduler, clear the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _save_checkpoint(path, model, optimizer, scheduler, best_state, bad_epochs, history, epoch, settings) -> None:
    payload = {
        "fingerprint": settings.fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best_state": best_state,
        "bad_epochs": bad_epochs,
        "history": history.as_dict(),
        "rng": _rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
