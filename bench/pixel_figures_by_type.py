"""Which defect type holds a run's pixel figures down: the test maps of a finished run split by defect type.

The run's best checkpoint scores its own test split (the seen anomalies stay out, as in the run's test pass). For
each defect type: its share of the defect pixels, the pixel AUROC of its defect pixels against every normal pixel of
the split (inside-mask pixels are defect, the rest normal, as in the run's pixel metrics), the share of its defect
pixels above the normal pixels' 99th / 95th / 70th percentiles (the true-positive rate at 1 / 5 / 30 % false
positives), the mean map value inside its regions by distance from the region's edge (is the inside missed or only
the rim?) and the share of its images' pixels outside the mask above the 99th percentile (spill). Then the run's
pixel AUROC and AP with and without each type's images. Analysis of a finished run only: nothing here chooses a
setting.

Usage: .venv/bin/python bench/pixel_figures_by_type.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from common import finished_run  # bench/ is sys.path[0] when run as a script

FALSE_POSITIVE_RATES = (0.01, 0.05, 0.3)
EDGE_BANDS = ((0, 4), (4, 12), (12, 32), (32, np.inf))  # pixels from the region's edge


def test_maps(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps (N,H,W), masks (N,H,W) bool, defect type per image) of the run's test split, best checkpoint."""
    _, datamodule, module = finished_run(run, "test")
    maps, masks, types = [], [], []
    with torch.inference_mode():
        for batch in datamodule.test_dataloader():
            maps.append(module.predict_images(batch["image"])[0].float().numpy())
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
            types += [Path(p).parent.name for p in batch["image_path"]]
    return np.concatenate(maps), np.concatenate(masks), np.array(types)


def edge_profile(maps: np.ndarray, masks: np.ndarray) -> list[float]:
    """Mean map value inside the regions, per band of distance from the edge (nan where no region reaches it)."""
    sums, counts = np.zeros(len(EDGE_BANDS)), np.zeros(len(EDGE_BANDS))
    for values, mask in zip(maps, masks):
        if mask.any():
            distance = ndimage.distance_transform_edt(mask)
            for j, (low, high) in enumerate(EDGE_BANDS):
                band = mask & (distance > low) & (distance <= high)
                sums[j] += values[band].sum()
                counts[j] += band.sum()
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def report(run: Path) -> None:
    maps, masks, types = test_maps(run)
    normal = maps[~masks]
    percentile = {rate: np.quantile(normal, 1 - rate) for rate in FALSE_POSITIVE_RATES}
    sample = np.random.default_rng(0).choice(normal, min(normal.size, 2_000_000), replace=False)
    print(f"{run}: {len(maps)} test images; pixel AUROC {100 * roc_auc_score(masks.ravel(), maps.ravel()):.1f}, "
          f"pixel AP {100 * average_precision_score(masks.ravel(), maps.ravel()):.1f}")
    print("| type | images | share of defect pixels | pixel AUROC vs normal pixels | TPR at FPR 1 / 5 / 30 % | "
          "mean inside, edge 0-4 / 4-12 / 12-32 / >32 px | spill | P / A without its images |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in sorted(set(types)):
        chosen = types == name
        defect = maps[chosen][masks[chosen]]
        spill = float(np.mean(maps[chosen][~masks[chosen]] > percentile[0.01]))
        kept = ~chosen
        without = (f"{100 * roc_auc_score(masks[kept].ravel(), maps[kept].ravel()):.1f} / "
                   f"{100 * average_precision_score(masks[kept].ravel(), maps[kept].ravel()):.1f}")
        if defect.size == 0:  # the normal images
            print(f"| {name} | {chosen.sum()} | - | - | - | - | {spill:.4f} | {without} |")
            continue
        auroc = roc_auc_score(np.r_[np.zeros(sample.size), np.ones(defect.size)], np.r_[sample, defect])
        rates = " / ".join(f"{np.mean(defect > percentile[rate]):.2f}" for rate in FALSE_POSITIVE_RATES)
        profile = " / ".join(f"{v:.2f}" for v in edge_profile(maps[chosen], masks[chosen]))
        print(f"| {name} | {chosen.sum()} | {defect.size / masks.sum():.0%} | {100 * auroc:.1f} | {rates} | "
              f"{profile} | {spill:.4f} | {without} |")


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        if not (run / "config.yaml").is_file() or not (run / "checkpoints" / "best.ckpt").is_file():
            sys.exit(f"{run}: not a finished run (config.yaml and checkpoints/best.ckpt); pass a run folder")
        report(run)


if __name__ == "__main__":
    main()
