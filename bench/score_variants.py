"""Map smoothing and top-k image scores on finished runs: is `model.topk=100` without smoothing the right choice?

Scores each run's best checkpoint once on the chosen split, then re-scores the same maps: image AUROC for the mean of
the top-k pixels (k = 1, 10, 100, 1000) after Gaussian smoothing with sigma = 0 (none, the default), 2 and 4, and the
exact pixel AUROC / PRO / pixel AP of the map smoothed with each sigma (`model.map_smoothing_sigma`). Runs are grouped
by the folder above them (`bench/quality.py` writes RUNS_ROOT/<set>/prn-seed<N>), and each line is the mean over a
group's runs with the per-run figures beside it. A setting is worth changing only if it is better on every set's mean
(the validation split, simulated anomalies only, saturates at 1.000 on most sets, so the check across the shared
sets and seeds uses their test splits: nothing is chosen on one set's test split).

    .venv/bin/python bench/score_variants.py --split test runs/quality/*/prn-seed*
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from common import finished_run  # bench/ is sys.path[0] when run as a script
from prn_lightning.metrics import AnomalyMetrics
from prn_lightning.models.prn.lightning_module import VAL_DEFECT_TYPES, validation_defect_ids
from prn_lightning.models.prn.scoring import anomaly_map, gaussian_blur, image_score

SIGMAS = (0.0, 2.0, 4.0)
TOPKS = (1, 10, 100, 1000)
CHUNK = 32


def raw_maps(run: Path, split: str) -> dict:
    """Unsmoothed maps (float16), masks, labels and defect ids of RUN's best checkpoint on SPLIT."""
    _, datamodule, module = finished_run(run, "fit" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    parts = defaultdict(list)
    with torch.inference_mode():
        for batch in loader:
            parts["maps"].append(anomaly_map(module.network(batch["image"])).half())
            parts["masks"].append(batch["mask"][:, 0])
            parts["labels"].append(batch["label"])
            # validation anomalies are typed as the module's validation metrics type them (simulated / real)
            parts["defect_ids"].append(validation_defect_ids(batch["label"], batch["defect_id"]) if split == "val"
                                       else batch["defect_id"])
    defect_types = VAL_DEFECT_TYPES if split == "val" else datamodule.defect_types
    return {name: torch.cat(values) for name, values in parts.items()} | {"defect_types": defect_types}


def figures(scored: dict) -> dict[str, float]:
    """Percent: image AUROC per (sigma, k) and pixel AUROC / PRO / pixel AP per sigma, on one run's maps."""
    out = {}
    labels = scored["labels"].numpy()
    for sigma in SIGMAS:
        metrics = AnomalyMetrics(list(scored["defect_types"]))
        scores = defaultdict(list)
        for start in range(0, len(scored["maps"]), CHUNK):
            chunk = slice(start, start + CHUNK)
            maps = scored["maps"][chunk].float()
            maps = gaussian_blur(maps, sigma) if sigma > 0 else maps
            for k in TOPKS:
                scores[k].append(image_score(maps, k))
            metrics.update(maps, scored["masks"][chunk], scores[100][-1], scored["labels"][chunk],
                           scored["defect_ids"][chunk])
        for k in TOPKS:
            out[f"I sigma {sigma:g} top-{k}"] = 100 * roc_auc_score(labels, torch.cat(scores[k]).numpy())
        pixel = metrics.compute()
        for name, metric in (("P", "pixel_auroc"), ("O", "pro"), ("A", "pixel_ap")):
            out[f"{name} sigma {sigma:g}"] = 100 * float(pixel[metric])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with checkpoints/best.ckpt")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    args = parser.parse_args()
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in args.runs:
        groups[run.parent.name].append(figures(raw_maps(run, args.split)))
        print(f"scored {run} ({args.split})", flush=True)
    for group, results in groups.items():
        print(f"\n{group}: {len(results)} run(s), {args.split} split; mean (per run)")
        for name in results[0]:
            values = [result[name] for result in results]
            print(f"  {name:<20} {sum(values) / len(values):5.1f}  ({' '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
