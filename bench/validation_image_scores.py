"""Image-score variants on a finished run's validation split (never its test split): which way of turning an
anomaly map into one score separates the validation normals from the simulated anomalies best, and, for a run
with real validation anomalies (`data.num_val_anomalies` > 0), from those real ones alone.

Variants: the mean of the top-k pixels (k = 10, 100 (the default `model.topk`), 1000) and, after Gaussian smoothing
with sigma 4, the maximum and the top-100 mean. Prints one line per run with the image AUROC of each.

Usage: .venv/bin/python bench/validation_image_scores.py RUN_DIR [RUN_DIR ...]   (uses RUN_DIR/checkpoints/best.ckpt)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from common import finished_run  # bench/ is sys.path[0] when run as a script
from prn_lightning.models.prn.scoring import anomaly_map, gaussian_blur, image_score


def variants(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    smoothed = gaussian_blur(maps, 4.0)
    return {"top10": image_score(maps, 10), "top100": image_score(maps, 100), "top1000": image_score(maps, 1000),
            "max_sigma4": image_score(smoothed, 1), "top100_sigma4": image_score(smoothed, 100)}


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        cfg, datamodule, module = finished_run(run, "fit")
        maps, labels, real = [], [], []
        with torch.inference_mode():
            for batch in datamodule.val_dataloader():
                maps.append(anomaly_map(module.network(batch["image"]), float(cfg.model.map_smoothing_sigma)))
                labels.append(batch["label"])
                real.append(batch["defect_id"] >= 0)
        scores, truth, real = variants(torch.cat(maps)), torch.cat(labels).numpy(), torch.cat(real).numpy()
        aurocs = ", ".join(f"{name} {roc_auc_score(truth, s.numpy()):.4f}" for name, s in scores.items())
        print(f"{run}: {int((truth == 0).sum())} normal, {int((truth == 1).sum())} anomalous; image AUROC {aurocs}")
        if real.any():
            kept = (truth == 0) | real
            aurocs = ", ".join(f"{name} {roc_auc_score(truth[kept], s.numpy()[kept]):.4f}"
                               for name, s in scores.items())
            print(f"  the {int(real.sum())} real validation anomalies against the normals: image AUROC {aurocs}")


if __name__ == "__main__":
    main()
