"""What a run needs beyond Lightning's checkpoint to be stopped at any moment and continued exactly.

- Checkpoints are written atomically (`AtomicCheckpointIO`): a SIGKILL during a write leaves the previous file, never
  half of the new one.
- The random states of Python, NumPy and torch travel in every checkpoint (`Preemption.state_dict`), so anything
  drawing from them continues the same stream after a resume (PRN's own draws are seeded by position already).
- SIGTERM (pre-emption) stops the run after the current training step and saves `last.ckpt` there; the datamodule's
  batch counter in that checkpoint makes the resumed run skip the batches already done. A SIGTERM during validation
  waits for the epoch to finish (a half-validated epoch cannot be continued exactly); that epoch's own checkpoint is
  then the one to resume from. With several processes (DDP) Lightning's own SIGTERM handling applies: every rank
  stops and the run continues from its last epoch checkpoint.
"""
from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes to a temporary file next to the target and renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


def rng_states() -> dict[str, Any]:
    """The global random states of Python, NumPy, torch (and CUDA when present), as types a `weights_only`
    checkpoint load accepts (tensors, tuples, numbers)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                              "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position),
                                        int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class Preemption(pl.Callback):
    """Random states in every checkpoint; on SIGTERM, `last.ckpt` after the current step, then exit (see module)."""

    def __init__(self, last_path: str | Path) -> None:
        self.last_path = Path(last_path)
        self.stopping = False  # a SIGTERM arrived (the workflow exits with 143 once fit returns or raises)
        self._lightning_handler: Any = None
        self._validating = False

    # ------------------------------------------------------------------ random states
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict["rng"])

    # ------------------------------------------------------------------ SIGTERM
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1 and _main_thread():
            self._lightning_handler = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._note)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def _note(self, signum: int, frame: Any) -> None:
        self.stopping = True  # acted on at the next safe point: the end of a training step or of the epoch

    def _restore_handler(self) -> None:
        if self._lightning_handler is not None:
            signal.signal(signal.SIGTERM, self._lightning_handler)
            self._lightning_handler = None

    def _stop(self, trainer: pl.Trainer) -> None:
        """Hand the signal to Lightning, which ends fit at its next check (the end of this step or epoch)."""
        handler, self._lightning_handler = self._lightning_handler, None
        signal.signal(signal.SIGTERM, handler)
        if callable(handler):
            handler(signal.SIGTERM, None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.stopping = self.stopping or trainer.received_sigterm
        if not self.stopping or self._lightning_handler is None:
            return
        if batch_idx + 1 < trainer.num_training_batches:  # mid-epoch: save here, Lightning resumes after this step
            trainer.save_checkpoint(self.last_path)
            self._stop(trainer)
        # the epoch's last step: validation and the epoch-end checkpoint come first (on_train_epoch_end)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After validation; the checkpoint callbacks (they run last) save this epoch's state, then Lightning stops
        (the workflow's last.ckpt callback saves at every epoch end)."""
        if self.stopping and self._lightning_handler is not None:
            self._stop(trainer)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
