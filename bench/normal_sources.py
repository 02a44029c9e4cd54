"""A folder of a category's own normal training images, to use as anomaly sources (`data.texture_dir=FOLDER`).

Simulated anomalies then paste another normal image's surface (after DRAEM's photometric augmenters) into a Perlin
region: two finishes of the same part in one image, the way magnetic_tile's `uneven` defects look, which texture
sources such as Brodatz never make. The folder holds symbolic links to the training normals minus the validation
normals that the run with this seed holds out (`data.val_fraction`), so no validation image is ever pasted into a
training sample; test images are never included.

Usage: .venv/bin/python bench/normal_sources.py OUT_FOLDER SEED [CONFIG OVERRIDES ...]
       e.g. bench/normal_sources.py /tmp/mt_src_42 42 experiment=magnetic_tile_cpu data.root=../shared/data
            bench/normal_sources.py /tmp/syn_src_42 42 experiment=synthetic_cpu
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from prn_lightning.config import load_config
from prn_lightning.data.datamodule import hold_out
from prn_lightning.data.sources.registry import load_category


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[2].isdigit():
        sys.exit(__doc__.split("\n\n")[-1])
    out, seed = Path(sys.argv[1]), int(sys.argv[2])
    cfg = load_config(sys.argv[3:])
    train, val = hold_out(load_category(cfg.data).train, float(cfg.data.val_fraction), seed)
    out.mkdir(parents=True, exist_ok=True)
    for sample in train:
        link = out / sample.image_path.name
        if link.exists() or link.is_symlink():
            sys.exit(f"{link} exists: pass an empty or new OUT_FOLDER (image names must be unique in it)")
        os.symlink(sample.image_path.resolve(), link)
    print(f"{out}: {len(train)} training normals linked ({len(val)} validation normals of seed {seed} left out)")


if __name__ == "__main__":
    main()
