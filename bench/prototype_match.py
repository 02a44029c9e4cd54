"""Training-free evidence for `model.prototype_match`: how well the raw prototype residual separates defect pixels.

Uses only what a training run may look at: the seen anomalies (with their masks) and the held-out validation
normals of a category, never its test split. Prototypes are fitted as PRN fits them (k-means over the training
normals' backbone features, `--ratio`); the residual (F - P*)^2, averaged over channels and resized to the input,
is scored per stage and summed over stages (each divided by its mean on the validation normals). Pixel AUROC and AP
over all pixels of seen anomalies + validation normals, for whole-map matching and per-location matching.

    .venv/bin/python bench/prototype_match.py kolektor tire magnetic_tile
    .venv/bin/python bench/prototype_match.py magnetic_tile --ratio 1.0 --match image   # large K: whole maps only
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from prn_lightning.config import load_config
from prn_lightning.data.datamodule import hold_out
from prn_lightning.data.seen import split_seen
from prn_lightning.data.sources.registry import load_category
from prn_lightning.imaging.tensors import image_to_tensor, load_image, load_mask, mask_to_tensor
from prn_lightning.models.prn.backbone import FrozenBackbone
from prn_lightning.models.prn.prototypes import PrototypeBank

VARIANTS = (("image", 0), ("location", 0), ("location", 1), ("location", 2))


def stage_features(backbone: FrozenBackbone, paths: list, size: int) -> list[torch.Tensor]:
    mean = torch.tensor(backbone.model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(backbone.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    stages: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(paths), 16):
        images = torch.stack([image_to_tensor(load_image(p, size)) for p in paths[start:start + 16]])
        with torch.no_grad():
            features = backbone((images - mean) / std)[:3]
        for j in range(3):
            stages[j].append(features[j])
    return [torch.cat(s) for s in stages]


def evaluate(category: str, data_root: Path, size: int, ratio: float, seed: int, match_kind: str = "all",
             backbone_name: str | None = None) -> list[str]:
    cfg = load_config(["experiment=folder_cpu", f"data.root={data_root}", f"data.category={category}"])
    splits = load_category(cfg.data)
    seen, _ = split_seen(splits, int(cfg.data.num_seen_anomalies), seed)
    train, val = hold_out(splits.train, float(cfg.data.val_fraction), seed)
    backbone = FrozenBackbone(backbone_name or str(cfg.model.backbone.name), "bundled", (1, 2, 3, 4)).eval()
    started = time.time()
    fitted = stage_features(backbone, [s.image_path for s in train], size)
    queries = stage_features(backbone, [s.image_path for s in seen + val], size)
    masks = [mask_to_tensor(load_mask(s.mask_path, size)) for s in seen] + [torch.zeros(1, size, size)] * len(val)
    labels = torch.stack(masks).flatten().numpy() > 0.5
    lines = [f"{category}: {len(train)} training normals, {len(seen)} seen anomalies, {len(val)} validation normals, "
             f"features {time.time() - started:.0f} s"]
    for match, radius in (v for v in VARIANTS if match_kind in ("all", v[0])):
        bank = PrototypeBank(3, match=match, neighbourhood=radius)
        bank.fit(fitted, ratio=ratio, iterations=25, seed=seed)
        maps = []
        for j in range(3):
            residual = (queries[j] - bank.nearest(j, queries[j])).square().mean(1, keepdim=True)
            maps.append(F.interpolate(residual, size=(size, size), mode="bilinear", align_corners=False))
        summed = sum(m / m[len(seen):].mean() for m in maps)
        cells = []
        for scores in (*maps, summed):
            flat = scores.flatten().numpy()
            cells.append(f"{100 * roc_auc_score(labels, flat):.1f} / {100 * average_precision_score(labels, flat):.1f}")
        lines.append(f"| {category} | {match}, r={radius} | " + " | ".join(cells) + " |")
    return lines


def category_arguments(doc: str, location: bool = False, matches: bool = False) -> argparse.Namespace:
    """The command line the prototype benchmarks share: categories, data root, input size, ratio and seed (with
    `location`, --location R: per-location matching within R positions instead of whole maps; with `matches`,
    --match: which of VARIANTS to score)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("categories", nargs="+")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("PRN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared"
                                                    / "data")))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    if matches:  # per-location windows hold K x (2r+1)^2 vectors per position: many GiB for large K
        parser.add_argument("--match", choices=("all", "image", "location"), default="all",
                            help="score only whole-map (image) or only per-location variants (default: all)")
        parser.add_argument("--backbone", default=None,
                            help="a bundled backbone (model.backbone.name), e.g. tf_efficientnet_lite2 "
                                 "(default: the experiment's, Lite0)")
    if location:
        parser.add_argument("--location", type=int, default=None, metavar="R",
                            help="match per location within R positions (model.prototype_match=location)")
    return parser.parse_args()


def main() -> None:
    args = category_arguments(__doc__, matches=True)
    print("| category | match | stage 1 AUROC / AP | stage 2 | stage 3 | sum |")
    print("| --- | --- | --- | --- | --- | --- |")
    for category in args.categories:
        for line in evaluate(category, args.data_root, args.size, args.ratio, args.seed, args.match,
                             args.backbone):
            print(line, flush=True)


if __name__ == "__main__":
    main()
