"""What a finished run leaves in its directory, for people with or without W&B.

metrics.json, per_defect.csv, history.csv (one row per epoch), curves.png (ROC, PR, PRO), maps/*.png (anomaly-map
panels), and the same tables, curves and panels in the W&B run when there is one.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from prn_lightning.metrics.names import LOSS, METRICS, REAL_IMAGE_AUROC, REAL_PRO, TRAIN, VAL, key  # noqa: E402


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically so that a reader (sweep runner, table) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_per_defect_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = ["defect_type", "num_images", "image_auroc", "pro"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(path: Path, curves: dict[str, Any], metrics: dict[str, float], fpr_limit: float = 0.3) -> None:
    """ROC (pixel), PR (pixel) and PRO (up to the FPR limit) side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    roc, pr, pro = curves["roc"], curves["pr"], curves["pro"]
    axes[0].plot(np.asarray(roc["fpr"]), np.asarray(roc["tpr"]))
    axes[0].set(title=f"pixel ROC (AUROC {metrics['pixel_auroc']:.3f})", xlabel="FPR", ylabel="TPR")
    axes[1].plot(np.asarray(pr["recall"]), np.asarray(pr["precision"]))
    axes[1].set(title=f"pixel PR (AP {metrics['pixel_ap']:.3f})", xlabel="recall", ylabel="precision")
    axes[2].plot(np.asarray(pro["fpr"]), np.asarray(pro["pro"]))
    axes[2].axvline(fpr_limit, color="grey", linestyle="--")
    axes[2].set(title=f"PRO (AUPRO@{fpr_limit} {metrics['pro']:.3f})", xlabel="FPR", ylabel="PRO")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _panel_orders(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[int], list[int]]:
    """Anomalies by ascending score and normals by descending score; ties keep the input order (stable sorts), so
    the choice is the same whichever process or batch saw an image first."""
    anomalies = torch.nonzero(labels == 1).flatten()
    normals = torch.nonzero(labels == 0).flatten()
    low_anomalies = anomalies[torch.argsort(scores[anomalies], stable=True)].tolist()
    high_normals = normals[torch.argsort(scores[normals], descending=True, stable=True)].tolist()
    return low_anomalies, high_normals


def select_panel_indices(scores: torch.Tensor, labels: torch.Tensor, count: int) -> list[tuple[int, str]]:
    """Worst false negatives (lowest-scoring anomalies), worst false positives (highest-scoring normals), then
    the most confident detections: the images a person should look at first."""
    if count <= 0 or scores.numel() == 0:
        return []
    low_anomalies, high_normals = _panel_orders(scores, labels)
    chosen: list[tuple[int, str]] = []
    per_kind = max(1, count // 3)
    chosen += [(i, "worst-false-negative") for i in low_anomalies[:per_kind]]
    chosen += [(i, "worst-false-positive") for i in high_normals[:per_kind]]
    taken = {i for i, _ in chosen}
    rest = [i for i in reversed(low_anomalies) if i not in taken]
    chosen += [(i, "detection") for i in rest[: count - len(chosen)]]
    return chosen[:count]


def panel_candidates(scores: torch.Tensor, labels: torch.Tensor, count: int) -> set[int]:
    """Positions that `select_panel_indices` may still choose once more images are scored: the `count` lowest- and
    highest-scoring anomalies and the `count` highest-scoring normals. What it chooses from all images is among the
    union of these sets over any split of the images (each order is total)."""
    if count <= 0:
        return set()
    low_anomalies, high_normals = _panel_orders(scores, labels)
    return set(low_anomalies[:count]) | set(low_anomalies[-count:]) | set(high_normals[:count])


def render_panel(
    image: np.ndarray, mask: np.ndarray, amap: np.ndarray, score: float, threshold: float, title: str
) -> np.ndarray:
    """One RGB panel: input, ground truth, predicted map overlaid on the input, with the image score."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth")
    axes[2].imshow(image)
    axes[2].imshow(amap, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    verdict = "anomalous" if score >= threshold else "normal"
    axes[2].set_title(f"score {score:.3f} ({verdict})")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    panel = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return panel


class HistoryWriter(pl.Callback):
    """Appends one row per epoch (losses, learning rate, validation metrics: `train/...`, `val/...`) to history.csv.

    An epoch without a validation pass (`trainer.check_val_every_n_epoch` > 1) gets empty `val/` cells: the
    trainer's metrics still hold the last pass's values, which would read as a validation that never ran."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._epoch_started = time.monotonic()
        self._validated_epoch: int | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.monotonic()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               "epoch_time_s": round(time.monotonic() - self._epoch_started, 1)}  # training + validation
        validated = self._validated_epoch == trainer.current_epoch
        for name, value in sorted(trainer.callback_metrics.items()):
            if not name.endswith("_step") and (validated or not name.startswith(f"{VAL}/")):
                row[name.removesuffix("_epoch")] = float(value)
        rows = []
        if self.path.exists():
            with self.path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        rows = [r for r in rows if int(r["epoch"]) < trainer.current_epoch] + [row]
        shown = [key(TRAIN, LOSS), key(VAL, LOSS)] + [key(VAL, m.name) for m in METRICS]
        shown += [key(VAL, REAL_IMAGE_AUROC), key(VAL, REAL_PRO)]  # present with data.num_val_anomalies > 0
        if trainer.progress_bar_callback is None:  # logs, CI, sbatch: one line per epoch instead of a bar
            print(f"epoch {row['epoch']}: " + ", ".join(f"{k}={row[k]:.4f}" for k in shown if k in row), flush=True)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        partial = self.path.with_name(self.path.name + ".tmp")  # atomic: a kill never leaves half a history
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        partial.replace(self.path)
