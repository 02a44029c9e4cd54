"""The settings of a PRN training run that are not the network: optimiser, learning-rate schedule, prototype fitting.

Plain frozen dataclasses, so a module can be built in a notebook without a run config; `workflows/module_factory.py`
fills them from `model.*`. Their defaults are those of `experiments/model/base.yaml` (a test keeps the two equal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from prn_lightning.errors import ConfigError

OPTIMISERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step", "warmup_cosine")


@dataclass(frozen=True)
class OptimiserSettings:
    """`model.optimizer`: adam | adamw | sgd (momentum 0.9) over the trainable parameters. `qkv_weight_decay`, when
    set, replaces `weight_decay` for the attention's query/key/value projections alone (decay shrinks them until
    the heads are uniform: README "Attention logit scale")."""

    name: str = "adam"
    lr: float = 1.0e-4
    weight_decay: float = 1.0e-2
    qkv_weight_decay: float | None = None


@dataclass(frozen=True)
class SchedulerSettings:
    """`model.scheduler`: none; cosine (to 0 over max_epochs, per epoch); step (x gamma every step_size epochs);
    warmup_cosine (per optimiser step: linear warm-up over warmup_steps, then cosine to min_lr at the last step)."""

    name: str = "none"
    step_size: int = 100
    gamma: float = 0.5
    warmup_steps: int = 0
    min_lr: float = 0.0


@dataclass(frozen=True)
class PrototypeSettings:
    """`model.prototype_ratio`, `model.kmeans_iterations` and the run's seed: the FAISS k-means before training;
    `model.prototype_leave_one_out`: match training samples built on a normal image as if it had been left out of
    its prototype (`PrototypeBank.nearest`)."""

    ratio: float = 0.1
    iterations: int = 25
    seed: int = 42
    leave_one_out: bool = False


class WarmupCosine:
    """LR factor of optimiser step s (a LambdaLR lambda; an object so that resuming restores it).

    s < W: (s + 1) / (W + 1), rising linearly; s >= W: cosine from 1 at step W to min_lr / lr at the last step T - 1.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - 1 - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimiser(settings: OptimiserSettings, params: list[torch.nn.Parameter],
                    qkv_params: list[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimiser over `params`; those also in `qkv_params` (the attention's Q/K/V projections) form a second
    group with `settings.qkv_weight_decay` when it is set."""
    groups: list[dict[str, Any]] = [{"params": params}]
    if settings.qkv_weight_decay is not None:
        qkv = {id(p) for p in qkv_params}
        groups = [{"params": [p for p in params if id(p) not in qkv]},
                  {"params": [p for p in params if id(p) in qkv], "weight_decay": settings.qkv_weight_decay}]
    if settings.name in ("adam", "adamw"):
        kind = torch.optim.Adam if settings.name == "adam" else torch.optim.AdamW
        return kind(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.name == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, weight_decay=settings.weight_decay, momentum=0.9)
    raise ConfigError(f"model.optimizer.name={settings.name!r} is not one of {', '.join(OPTIMISERS)}")


def build_scheduler(settings: SchedulerSettings, optimiser: torch.optim.Optimizer, max_epochs: int,
                    total_steps: float) -> dict[str, Any] | None:
    """A Lightning `lr_scheduler` entry, or None for `none`. `total_steps`: the trainer's estimated stepping
    batches (optimiser steps of the whole run), used by warmup_cosine only."""
    if settings.name == "none":
        return None
    if settings.name == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, max_epochs))
        return {"scheduler": scheduler, "interval": "epoch"}
    if settings.name == "step":
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimiser, settings.step_size, settings.gamma),
                "interval": "epoch"}
    if settings.name == "warmup_cosine":
        lr = optimiser.param_groups[0]["lr"]
        if not math.isfinite(total_steps):
            raise ConfigError("model.scheduler.name=warmup_cosine needs a finite run: set trainer.max_epochs "
                              "or trainer.max_steps")
        if settings.warmup_steps < 0 or settings.warmup_steps >= total_steps:
            raise ConfigError(f"model.scheduler.warmup_steps={settings.warmup_steps} must be >= 0 and below the "
                              f"run's {int(total_steps)} optimiser steps")
        if not 0.0 <= settings.min_lr <= lr:
            raise ConfigError(f"model.scheduler.min_lr={settings.min_lr} must be in [0, model.optimizer.lr={lr}]")
        schedule = WarmupCosine(settings.warmup_steps, int(total_steps), settings.min_lr / lr if lr > 0 else 0.0)
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimiser, schedule), "interval": "step"}
    raise ConfigError(f"model.scheduler.name={settings.name!r} is not one of {', '.join(SCHEDULERS)}")
