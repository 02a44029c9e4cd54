"""Time the steady-state training loop of whatever prn_lightning is on PYTHONPATH, through its own `prn train`.

Used by bench_training.py for this checkout and for the baseline commit alike (it relies only on what both have: the
`prn train` command, Lightning's Trainer, PRNDataModule.on_after_batch_transfer and torch's DataLoader iterator).
A callback added to the Trainer times `--steps` training batches after `--warmup` ones: wall time per step from one
batch start to the next, the part spent waiting in the DataLoader iterator (the workers did not have the next batch
ready) and the part spent completing the batch in the main process (Perlin masks, blends: on_after_batch_transfer).
It then writes the JSON and ends the process at once (no validation, no test: only the timed steps matter here).

Usage: PYTHONPATH=<checkout>/src python bench/train_probe.py OUT.json WARMUP STEPS [prn train overrides ...]
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import dataloader

WAITED = {"loader": 0.0, "completion": 0.0}


def timed(function, counter: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            WAITED[counter] += time.perf_counter() - start
    return wrapper


class StepTimer(pl.Callback):
    """Times training batches warmup+1 .. warmup+steps, writes the result, exits the process."""

    def __init__(self, out: str, warmup: int, steps: int) -> None:
        self.out, self.warmup, self.steps = out, warmup, steps
        self.starts: list[float] = []
        self.marks: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())
        self.marks.append(dict(WAITED))
        if len(self.starts) == self.warmup + self.steps + 1:
            self._finish(trainer, batch)

    def _finish(self, trainer, batch) -> None:
        starts, marks = self.starts[self.warmup:], self.marks[self.warmup:]
        periods = [b - a for a, b in zip(starts, starts[1:])]
        total = starts[-1] - starts[0]
        images = int(batch["image"].shape[0])
        loader = marks[-1]["loader"] - marks[0]["loader"]
        completion = marks[-1]["completion"] - marks[0]["completion"]
        result = {
            "steps": len(periods), "batch_size": images, "torch_threads": torch.get_num_threads(),
            "median_step_s": statistics.median(periods), "step_s": periods,
            "images_per_s": images * len(periods) / total, "median_images_per_s": images / statistics.median(periods),
            "loader_wait_s": loader, "loader_wait_fraction": loader / total,
            "batch_completion_s": completion, "batch_completion_fraction": completion / total,
            "num_workers": getattr(trainer.train_dataloader, "num_workers", None),
        }
        with open(self.out, "w") as handle:
            json.dump(result, handle, indent=1)
        sys.stdout.flush()
        os._exit(0)  # done: skip the rest of the epoch, validation and test


def main() -> None:
    out, warmup, steps, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    from prn_lightning.cli import main as prn_main
    from prn_lightning.data.datamodule import PRNDataModule

    dataloader._BaseDataLoaderIter.__next__ = timed(dataloader._BaseDataLoaderIter.__next__, "loader")
    PRNDataModule.on_after_batch_transfer = timed(PRNDataModule.on_after_batch_transfer, "completion")
    trainer_init = pl.Trainer.__init__

    def with_timer(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), StepTimer(out, warmup, steps)]
        trainer_init(self, *args, callbacks=callbacks, **kwargs)

    pl.Trainer.__init__ = with_timer
    code = prn_main(["train", *overrides])
    raise SystemExit(f"prn train ended (code {code}) before {warmup + steps + 1} training batches")


if __name__ == "__main__":
    main()
