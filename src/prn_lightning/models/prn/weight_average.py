"""An exponential moving average of the trained parameters (`model.optimizer.ema_decay`).

A short CPU run (a few hundred steps of batch 8 at a high learning rate) ends wherever its last noisy steps left
the weights; the average over about the last 1 / (1 - decay) steps moves less from step to step. With an average,
validation (and so the best-checkpoint choice), every checkpoint's `state_dict` and therefore test, predict and
export all use the averaged weights; the optimiser keeps training the raw ones, which checkpoints carry beside the
average so that a resumed run continues both exactly.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

RAW_WEIGHTS_KEY = "prn_raw_weights"  # a checkpoint's raw weights when its state_dict holds the average
UPDATES_KEY = "prn_average_updates"  # how many optimiser steps the average has followed (its decay warm-up)


class ParameterAverage:
    """EMA of a module's trainable parameters; `swap` exchanges them with the module's own, in place.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's ExponentialMovingAverage
    with num_updates), so the first steps' random-ish weights fade quickly in a run of a few hundred steps.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.names = [name for name, parameter in module.named_parameters() if parameter.requires_grad]
        parameters = dict(module.named_parameters())
        self.average = {name: parameters[name].detach().clone() for name in self.names}
        self.updates = 0
        self.swapped = False

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards the module's parameters, right after an optimiser step."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        parameters = dict(module.named_parameters())
        for name in self.names:
            self.average[name].lerp_(parameters[name].detach(), 1.0 - decay)

    @torch.no_grad()
    def swap(self, module: nn.Module) -> None:
        """Exchange the module's parameters and the average (twice restores both)."""
        parameters = dict(module.named_parameters())
        for name in self.names:
            held = self.average[name].clone()
            self.average[name].copy_(parameters[name])
            parameters[name].copy_(held)
        self.swapped = not self.swapped

    def write(self, checkpoint: dict[str, Any]) -> None:
        """Put the average into the checkpoint's state_dict and the raw weights under RAW_WEIGHTS_KEY."""
        state = checkpoint["state_dict"]
        held = {name: self.average[name].detach().clone() for name in self.names}
        average, raw = (state, held) if self.swapped else (held, state)
        checkpoint[RAW_WEIGHTS_KEY] = {name: raw[name].detach().clone() for name in self.names}
        checkpoint[UPDATES_KEY] = self.updates
        for name in self.names:
            state[name] = average[name].detach().clone()

    def read(self, checkpoint: dict[str, Any]) -> None:
        """Resume: the average from the checkpoint's state_dict, whose entries get the raw weights back."""
        state, raw = checkpoint["state_dict"], checkpoint[RAW_WEIGHTS_KEY]
        for name in self.names:
            self.average[name] = state[name].detach().clone().to(self.average[name].device)
            state[name] = raw[name]
        self.updates = int(checkpoint[UPDATES_KEY])
        self.swapped = False
