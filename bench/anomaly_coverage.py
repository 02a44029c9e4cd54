"""Training-data evidence for `data.perlin.min_threshold`: how much of the image the seen anomalies cover, against
the simulated (Perlin) anomalies of the set's experiment.

DRAEM's masks (threshold 0.5, grid scales 2**0-2**5) cover a median 5.5 % of the image and more than 20 % in under
1 % of draws, so a set whose real defects are large regions (magnetic_tile's `uneven` shading) trains on simulated
anomalies of another size than the ones it must outline. This reads only what training reads: the seen anomalies a
seed draws (`data.num_seen_anomalies`, masks at the input size and resize policy) and the Perlin masks at the
experiment's settings, with and without a `--min-threshold`. As in every run, the test split's files are probed
first (readable, mask empty: an empty one is never drawn as seen); only the seen anomalies' masks are measured.

    .venv/bin/python bench/anomaly_coverage.py                         # the three shared sets and make train's data
    .venv/bin/python bench/anomaly_coverage.py magnetic_tile --min-threshold 0.1
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch

from prn_lightning.config import load_config
from prn_lightning.config_checks import image_size_hw
from prn_lightning.data.checks import check_splits
from prn_lightning.data.datamodule import perlin_settings
from prn_lightning.data.seen import split_held_out
from prn_lightning.data.sources.registry import load_category
from prn_lightning.imaging.tensors import load_mask
from prn_lightning.synthesis.perlin import perlin_masks
from quality import REAL_SETS, SEEDS, set_overrides, shared_root  # bench/ is sys.path[0] when run as a script

QUANTILES = (0.1, 0.5, 0.9)
SIMULATED_DRAWS = 2000


def coverage_cells(values: np.ndarray) -> str:
    """'10 / 50 / 90 % quantiles | share above 20 %' of mask coverages, in percent."""
    quantiles = " / ".join(f"{100 * q:.1f}" for q in np.quantile(values, QUANTILES))
    return f"{quantiles} | {100 * float(np.mean(values > 0.2)):.0f} %"


def simulated_coverage(perlin: dict, size: tuple[int, int], seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.cat([perlin_masks(100, *size, generator=generator, device="cpu", **perlin)
                       for _ in range(SIMULATED_DRAWS // 100)])
    return masks.flatten(1).mean(dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", default=[*REAL_SETS, "default"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--min-threshold", type=float, default=0.1, help="the range to compare with DRAEM's")
    args = parser.parse_args()
    print("| set | masks | coverage (% of the image): 10 / 50 / 90 % quantiles | share above 20 % |\n"
          "| --- | --- | --- | --- |")
    for name in args.sets:
        cfg = load_config(set_overrides(name, shared_root(), None))
        size, resize = image_size_hw(cfg.data.image_size), str(cfg.data.resize)
        splits = load_category(cfg.data)
        report = check_splits(splits, size, resize=resize)
        seen = []
        for seed in args.seeds:
            drawn, _, _ = split_held_out(splits, int(cfg.data.num_seen_anomalies), 0, seed,
                                         unusable=report.empty_masks)
            seen += [float(load_mask(s.mask_path, size, resize).mean()) for s in drawn]
        print(f"| {name} | seen anomalies, seeds {', '.join(map(str, args.seeds))} ({len(seen)}) | "
              f"{coverage_cells(np.array(seen))} |")
        perlin = perlin_settings(cfg.data.perlin)
        print(f"| {name} | simulated, threshold {perlin['threshold']}"
              f"{'' if perlin['min_threshold'] is None else ' from ' + str(perlin['min_threshold'])} "
              f"({SIMULATED_DRAWS}) | {coverage_cells(simulated_coverage(perlin, size, 0))} |")
        if perlin["min_threshold"] != args.min_threshold:
            ranged = {**perlin, "min_threshold": args.min_threshold}
            print(f"| {name} | simulated, threshold {args.min_threshold}-{perlin['threshold']} "
                  f"({SIMULATED_DRAWS}) | {coverage_cells(simulated_coverage(ranged, size, 0))} |")


if __name__ == "__main__":
    main()
