"""Where a run's defect pixels fall among its normal pixels: which part of the defect regions costs pixel AUROC.

Pixel AUROC counts every defect pixel against every normal one, so it is lost in the low tail of a defect region
(its faint edge, or a mask drawn wider than the defect), while pixel AP rewards the peak. For each run (best
checkpoint, test split): the score quantiles of the pixels of normal test images, and per defect type where the
10th / 50th / 90th percentile pixel inside the masks ranks among those normal pixels (the percent of normal pixels
scored below it) and the percent of defect pixels above the normal pixels' 99th percentile. Analysis only: it
chooses nothing.

    .venv/bin/python bench/map_quantiles.py runs/quality/tire/prn-seed42
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from score_variants import raw_maps  # bench/ is sys.path[0] when run as a script

NORMAL_QUANTILES = (50, 90, 99, 99.9)
DEFECT_QUANTILES = (10, 50, 90)


def defect_ranks(run: Path) -> list[str]:
    """Report lines for one run: normal-pixel quantiles, then one line per defect type with masked pixels."""
    scored = raw_maps(run, "test")
    maps, masks = scored["maps"].float().numpy(), scored["masks"].numpy() > 0.5
    labels, defect_ids = scored["labels"].numpy(), scored["defect_ids"].numpy()
    normal = np.sort(maps[labels == 0].ravel())
    if normal.size == 0:
        return [f"{run}: no normal test images"]
    normal_quantiles = np.percentile(normal, NORMAL_QUANTILES)
    lines = [f"{run}", "  normal pixels  q" + " / ".join(f"{q:g}" for q in NORMAL_QUANTILES) + ": "
             + " / ".join(f"{v:.4f}" for v in normal_quantiles)]
    normal_q99 = normal_quantiles[NORMAL_QUANTILES.index(99)]
    for index, name in enumerate(scored["defect_types"]):
        selected = (defect_ids == index) & (labels == 1)
        pixels = maps[selected][masks[selected]]
        if pixels.size == 0:
            continue
        ranks = np.searchsorted(normal, np.percentile(pixels, DEFECT_QUANTILES)) / normal.size
        lines.append(f"  {name:<14} {int(selected.sum()):4d} images: defect-pixel q"
                     + "/".join(f"{q}" for q in DEFECT_QUANTILES) + " above "
                     + " / ".join(f"{100 * r:.1f}" for r in ranks) + " % of normal pixels; "
                     f"{100 * (pixels > normal_q99).mean():.1f} % above the normal q99")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with checkpoints/best.ckpt")
    for run in parser.parse_args().runs:
        print("\n".join(defect_ranks(run)), flush=True)


if __name__ == "__main__":
    main()
