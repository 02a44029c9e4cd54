"""Where a run on the embedded synthetic dataset loses image AUROC: its test defects split by how visible they are.

The generator draws about one defect in five from its faint `hard` ranges (`data/sources/synthetic.py`). Visibility is
the generator's `defect_visibility` (as `tests/test_synthetic.py` checks it): the peak of the Gaussian-blurred (sigma
2 px) absolute grey change between the test image and the same image rendered without its defect; under 15 grey
levels counts as faint. The run's best checkpoint scores its own test split (the seen anomalies stay out of it, as
in the run's test pass), and the image AUROC is computed against all test normals three times: over every test
defect (the run's figure), over the visible ones and over the faint ones. Each faint defect is listed with the
share of normals it outscores.

Usage: .venv/bin/python bench/faint_defects.py RUN_DIR [RUN_DIR ...]   (runs of `make train` or any `data=synthetic`)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from common import finished_run  # bench/ is sys.path[0] when run as a script
from prn_lightning.data.sources.synthetic import MARKER, VISIBLE_GREY_LEVELS, defect_visibility


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    truth = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(truth, np.r_[normal, anomalous]))


def main() -> None:
    for run in map(Path, sys.argv[1:]):
        if not (run / "config.yaml").is_file():
            sys.exit(f"{run}: no config.yaml there; pass the folder of a finished run (runs/synthetic/texture/...)")
        cfg = OmegaConf.load(run / "config.yaml")
        if cfg.data.dataset != "synthetic":
            sys.exit(f"{run}: data.dataset is {cfg.data.dataset}; this split needs a run on data=synthetic")
        marker = Path(cfg.data.root) / MARKER
        if not marker.is_file():
            sys.exit(f"{marker} not found: run this from the folder the run was trained in (its data.root is relative)")
        generator = json.loads(marker.read_text())
        _, datamodule, module = finished_run(run, "test")
        scores, labels, paths = [], [], []
        with torch.inference_mode():
            for batch in datamodule.test_dataloader():
                scores.append(module.predict_images(batch["image"])[1])
                labels.append(batch["label"])
                paths += batch["image_path"]
        scores, labels = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        normal = scores[labels == 0]
        defects = [i for i, label in enumerate(labels) if label == 1]
        peak = {i: defect_visibility(int(generator["seed"]), str(cfg.data.category), Path(paths[i]).parent.name,
                                     int(Path(paths[i]).stem), int(generator["image_size"])) for i in defects}
        faint = [i for i in defects if peak[i] < VISIBLE_GREY_LEVELS]
        visible = [i for i in defects if peak[i] >= VISIBLE_GREY_LEVELS]
        line = (f"{run}: {len(normal)} normal, {len(visible)} visible + {len(faint)} faint test defects; image AUROC "
                f"all {auroc(normal, scores[labels == 1]):.4f}, visible {auroc(normal, scores[visible]):.4f}")
        print(line + (f", faint {auroc(normal, scores[faint]):.4f}" if faint else ""))
        for i in faint:
            print(f"  faint {Path(paths[i]).parent.name}/{Path(paths[i]).name}: peak change {peak[i]:.1f} grey "
                  f"levels, score {scores[i]:.3f}, above {(normal < scores[i]).mean():.0%} of the normals")


if __name__ == "__main__":
    main()
