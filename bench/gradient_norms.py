"""The total gradient norm of every optimiser step of an ordinary `prn train` run (analysis only; it changes nothing).

A callback added to the Trainer reads the gradients Lightning is about to step with (on_before_optimizer_step,
before any `trainer.gradient_clip_val` clipping) and records their total L2 norm with the epoch. The run is the
ordinary one otherwise: same config, seed, checkpoints and test (reading the gradients draws no random numbers, so
a full run reproduces the quality table's row). `--epochs N` ends the process after N training epochs instead.
The JSON (steps as [epoch, norm], the quantiles, the share of steps above `--above`) is rewritten after every epoch.
README "Gradient clipping" chose its value from these figures.

Usage: .venv/bin/python bench/gradient_norms.py OUT.json [--epochs N] [--above X] -- [prn train overrides ...]
  e.g. bench/gradient_norms.py norms.json -- experiment=synthetic_cpu seed=42 run_dir=/tmp/run logger=none
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np


class GradientNorms(pl.Callback):
    """Records [epoch, total gradient norm] per optimiser step; writes the summary at each epoch end."""

    def __init__(self, out: Path, epochs: int | None, above: float) -> None:
        self.out, self.epochs, self.above = out, epochs, above
        self.steps: list[tuple[int, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        squares = sum(float(p.grad.detach().pow(2).sum()) for p in pl_module.parameters() if p.grad is not None)
        self.steps.append((trainer.current_epoch, squares ** 0.5))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.write()
        if self.epochs is not None and trainer.current_epoch + 1 >= self.epochs:
            sys.stdout.flush()
            os._exit(0)  # done: skip the rest of the run (its test included)

    def write(self) -> None:
        norms = np.array([norm for _, norm in self.steps])
        quantiles = {f"p{q}": float(np.percentile(norms, q)) for q in (10, 50, 90, 99)} if len(norms) else {}
        summary = {"steps": len(norms), **quantiles, "max": float(norms.max()) if len(norms) else None,
                   f"share_above_{self.above:g}": float((norms > self.above).mean()) if len(norms) else None,
                   "per_step": self.steps}
        self.out.write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=None, help="stop after this many training epochs")
    parser.add_argument("--above", type=float, default=2.0, help="report the share of steps above this norm")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]
    from prn_lightning.cli import main as prn_main

    recorder = GradientNorms(args.out, args.epochs, args.above)
    trainer_init = pl.Trainer.__init__

    def with_recorder(self, *a, callbacks=None, **kwargs):
        trainer_init(self, *a, callbacks=[*(callbacks or []), recorder], **kwargs)

    pl.Trainer.__init__ = with_recorder
    try:
        code = prn_main(["train", *overrides])
    finally:
        recorder.write()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
