"""How far whole seen anomalies sit from the prototypes outside their defect, per seen-anomaly augmentation.

PRN labels every pixel outside a seen anomaly's mask normal; if the augmentation moves the image (flip, 90-degree
turn, affine), those pixels no longer line up with any whole-map prototype and carry large residuals. This script
measures it on a real category: prototypes = k-means (K = 10 % of the normal training images, whole maps, FAISS)
of the bundled Lite0 backbone's stages 1-3 over the training normals (validation hold-out removed, as in training);
for each image, the nearest prototype by whole-map L2 and the residual (F - P*)^2 averaged over channels and
the feature positions outside the (max-pooled) defect mask. Rows: the test normals, the raw seen anomalies,
and the seen anomalies after each `data.seen_augmentation` (4 draws each), plus an explicit 90-degree turn.

Usage: python bench/residual_registration.py [--category kolektor] [--root ../shared/data] [--seed 42]
Prints a markdown table and writes bench/results/registration_<category>.json.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from prn_lightning.data.datamodule import hold_out
from prn_lightning.data.seen import split_seen
from prn_lightning.data.sources.registry import load_category
from prn_lightning.imaging.tensors import image_to_tensor, load_image, load_mask
from prn_lightning.models.prn.backbone import FrozenBackbone
from prn_lightning.synthesis.augment import augment_defect, defect_augmentation

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
DRAWS = 4


@torch.no_grad()
def features(backbone: FrozenBackbone, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Stages 1-3 of the backbone for RGB uint8 images, batched."""
    out: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(images), 16):
        batch = torch.stack([image_to_tensor(i) for i in images[start:start + 16]])
        for stage, f in enumerate(backbone((batch - MEAN) / STD)[:3]):
            out[stage].append(f)
    return [torch.cat(s) for s in out]


def residual_outside(stage_features: list[torch.Tensor], prototypes: list[torch.Tensor],
                     masks: list[np.ndarray]) -> list[float]:
    """Per stage: mean over images, channels and positions outside the defect of (F - P*)^2."""
    mask = torch.stack([torch.from_numpy(m).float() for m in masks])[:, None]
    means = []
    for f, p in zip(stage_features, prototypes):
        flat_f, flat_p = f.flatten(1), p.flatten(1)
        nearest = torch.cdist(flat_f, flat_p).argmin(1)
        residual = ((f - p[nearest]) ** 2).mean(1, keepdim=True)
        stride = mask.shape[-1] // f.shape[-1]
        outside = F.max_pool2d(mask, stride) == 0
        means.append(float(residual[outside].mean()))
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--category", default="kolektor")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    torch.set_num_threads(2)
    splits = load_category({"dataset": "folder", "root": args.root, "category": args.category})
    seen, test = split_seen(splits, 10, args.seed)
    normals, _ = hold_out(splits.train, 0.1, args.seed)
    backbone = FrozenBackbone("tf_efficientnet_lite0", "bundled", (1, 2, 3, 4)).eval()

    train_features = features(backbone, [load_image(s.image_path, args.size) for s in normals])
    k = max(1, round(0.1 * len(normals)))
    prototypes = []
    for f in train_features:
        data = np.ascontiguousarray(f.flatten(1).numpy())
        kmeans = faiss.Kmeans(data.shape[1], k, niter=25, seed=args.seed, min_points_per_centroid=1)
        kmeans.train(data)
        prototypes.append(torch.from_numpy(kmeans.centroids.copy()).reshape(k, *f.shape[1:]))

    test_normals = [s for s in test if s.label == 0]
    rows = {"test normals": ([load_image(s.image_path, args.size) for s in test_normals],
                             [np.zeros((args.size, args.size), np.uint8)] * len(test_normals))}
    raw = [(load_image(s.image_path, args.size), load_mask(s.mask_path, args.size)) for s in seen]
    rows["seen, raw"] = ([i for i, _ in raw], [m for _, m in raw])
    rows["seen, 90-degree turn"] = ([np.ascontiguousarray(np.rot90(i)) for i, _ in raw],
                                    [np.ascontiguousarray(np.rot90(m)) for _, m in raw])
    for mode in ("photometric", "geometric"):
        pipeline = defect_augmentation(mode)
        pairs = [augment_defect(pipeline, i, m, seed=1000 * d + n) for d in range(DRAWS) for n, (i, m) in
                 enumerate(raw)]
        rows[f"seen, data.seen_augmentation={mode}"] = ([i for i, _ in pairs], [m for _, m in pairs])

    results = {}
    print(f"| {args.category} ({args.size} px, K={k}) | stage 1 | stage 2 | stage 3 |\n| --- | --- | --- | --- |")
    for name, (images, masks) in rows.items():
        values = residual_outside(features(backbone, images), prototypes, masks)
        results[name] = values
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    out = REPO / "bench" / "results" / f"registration_{args.category}.json"
    out.write_text(json.dumps({"category": args.category, "size": args.size, "k": k, "seed": args.seed,
                               "mean_residual_outside_mask": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
