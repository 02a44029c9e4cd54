"""Training-free evidence for `model.prototype_leave_one_out`: training normals sit closer to their prototypes.

The prototypes are k-means means of the training normals, so a training normal is one of the n images averaged into
its own prototype, while a test normal never is. This prints, per stage, the mean prototype residual (F - P*)^2 of
the training normals (the members), of the held-out validation normals (no test image is read), and of the
training normals matched leave-one-out (`PrototypeBank.nearest(..., members=...)`): the ratio validation / training
is the gap the network trains across; leave-one-out should bring it near 1.

    .venv/bin/python bench/prototype_membership.py kolektor magnetic_tile
    .venv/bin/python bench/prototype_membership.py texture --data-root data/synthetic
    .venv/bin/python bench/prototype_membership.py tire --ratio 0.4 --location 1     # per-location matching, r = 1
"""
from __future__ import annotations

from pathlib import Path

import torch

from prn_lightning.config import load_config
from prn_lightning.data.datamodule import hold_out
from prn_lightning.data.sources.registry import load_category
from prn_lightning.models.prn.backbone import FrozenBackbone
from prn_lightning.models.prn.prototypes import PrototypeBank
from prototype_match import category_arguments, stage_features  # bench/ is sys.path[0] when run as a script


def mean_residual(bank: PrototypeBank, stage: int, features: torch.Tensor, members: bool = False,
                  chunk: int = 16) -> float:
    """Mean of (F - P*)^2 over all maps, a few maps at a time (per-location matching compares every position with
    K x (2r+1)^2 candidates)."""
    total = 0.0
    for part in features.split(chunk):
        flags = torch.full((part.shape[0],), members) if members else None
        total += float((part - bank.nearest(stage, part, flags)).double().square().sum())
    return total / features.numel()


def measure(category: str, data_root: Path, size: int, ratio: float, seed: int,
            location: int | None = None) -> list[str]:
    cfg = load_config(["experiment=folder_cpu", f"data.root={data_root}", f"data.category={category}"])
    train, val = hold_out(load_category(cfg.data).train, float(cfg.data.val_fraction), seed)
    backbone = FrozenBackbone(str(cfg.model.backbone.name), "bundled", (1, 2, 3, 4)).eval()
    members = stage_features(backbone, [s.image_path for s in train], size)
    held_out = stage_features(backbone, [s.image_path for s in val], size)
    bank = PrototypeBank(3, match="image" if location is None else "location", neighbourhood=location or 0)
    bank.fit(members, ratio=ratio, iterations=25, seed=seed)
    cells = []
    for stage in range(3):
        fitted, unseen = mean_residual(bank, stage, members[stage]), mean_residual(bank, stage, held_out[stage])
        left_out = mean_residual(bank, stage, members[stage], members=True)
        cells.append(f"{fitted:.2f} / {unseen:.2f} ({unseen / fitted:.2f}x) / {left_out:.2f} "
                     f"({unseen / left_out:.2f}x)")
    match = "" if location is None else f", location r={location}"
    return [f"| {category}{match} | {len(train)} / {len(val)} | K = {bank.counts()[0]} | " + " | ".join(cells) + " |"]


def main() -> None:
    args = category_arguments(__doc__, location=True)
    print("| category | training / validation normals | prototypes | stage 1: training / validation (ratio) / "
          "training left out (ratio) | stage 2 | stage 3 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for category in args.categories:
        for line in measure(category, args.data_root, args.size, args.ratio, args.seed, args.location):
            print(line, flush=True)


if __name__ == "__main__":
    main()
