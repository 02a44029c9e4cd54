"""What an input size and resize policy leave of the real defects: how many regions survive and how thick they are.

For every anomalous test mask of a category, the mask is loaded exactly as training and evaluation load it
(`imaging.tensors.load_mask` with `data.image_size` and `data.resize`), and its 8-connected regions are measured:
regions kept (share of the native-resolution regions that still have a pixel, counted per image), the median
region thickness (2 x the largest distance-transform value: the width of its thickest part, in input pixels) and
the share of regions at most 2 px thick (a stride-4 feature map barely sees those). Candidate sizes per set follow
the native aspect (kolektor ~630 x 250 portrait, tire 300 x 400, magnetic_tile from 0.37 to 2.8 height/width).

Usage: python bench/defect_geometry.py [--root ../shared/data]
Prints one markdown table per category and writes bench/results/defect_geometry.json.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np

from prn_lightning.data.sources.registry import load_category
from prn_lightning.imaging.io import read_mask
from prn_lightning.imaging.tensors import load_mask

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "kolektor": [(256, "squash"), (256, "keep-aspect"), ((512, 192), "squash"), ((640, 256), "squash")],
    "magnetic_tile": [(256, "squash"), (256, "keep-aspect"), ((320, 320), "squash")],
    "tire": [(256, "squash"), ((192, 256), "squash"), ((288, 384), "squash")],
}


def regions(mask: np.ndarray) -> list[float]:
    """Thickness (2 x max distance to the background) of each 8-connected region of a {0, 1} mask."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    return [2 * float(distance[labels == i].max()) for i in range(1, count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    results = {}
    for category, candidates in CANDIDATES.items():
        splits = load_category({"dataset": "folder", "root": args.root, "category": category})
        masks = [s.mask_path for s in splits.test if s.mask_path is not None]
        native = [len(regions(read_mask(p))) for p in masks]
        print(f"\n| {category} ({len(masks)} masks, {sum(native)} regions) | regions kept | median thickness (px) "
              "| regions <= 2 px thick |\n| --- | --- | --- | --- |")
        results[category] = []
        for size, resize in candidates:
            kept, thickness = 0, []
            for path, count in zip(masks, native):
                found = regions(load_mask(path, size, resize))
                kept += min(len(found), count)
                thickness += found
            thin = float(np.mean(np.array(thickness) <= 2)) if thickness else float("nan")
            row = {"image_size": size if isinstance(size, int) else list(size), "resize": resize,
                   "regions_kept": kept / max(1, sum(native)), "median_thickness": float(np.median(thickness)),
                   "share_at_most_2px": thin}
            results[category].append(row)
            print(f"| {row['image_size']} {resize} | {row['regions_kept']:.1%} | {row['median_thickness']:.1f} "
                  f"| {thin:.1%} |")
    out = REPO / "bench" / "results" / "defect_geometry.json"
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
