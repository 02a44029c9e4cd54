"""Does the prototype residual add a one-class image score to PRN's? Measured on finished runs, nothing trained.

PRN scores an image by the top-k pixels of its segmentation map, which learned what anomalies look like from seen and
synthesised ones. The network also holds a training-free one-class signal: the residual D = (F - P*)^2 of each
prototype stage against its nearest prototype under the run's `model.prototype_match` (what PRN feeds its
decoder). Per run (its best checkpoint, its own prototypes and splits), this scores every image by

- `prn`: the run's image score (mean of the top-k map pixels, `model.topk`);
- `res_j`: the mean of the 10 largest channel-mean residuals of prototype stage j (j = 0, 1, 2);
- `prn+res_j`: the sum of both, each standardised by its mean and standard deviation on the validation normals
  (held-out training normals), so neither dominates by scale.

Which stage to add is decided on training data only: the residual score's AUROC of the run's seen anomalies (never
in the prototypes) against its validation normals. Test image AUROC is printed for every score, so the stage chosen
that way can be compared with the others afterwards (nothing here is chosen on the test split), and so is `shift_*`:
each single score's AUROC of the test normals against the validation normals (50 when both come from one
distribution). Each set's line is the mean over its runs (grouped by the folder above them, as `bench/quality.py`
writes RUNS_ROOT/<set>/prn-seed<N>).

    .venv/bin/python bench/residual_image_score.py runs/quality/*/prn-seed*
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from common import finished_run  # bench/ is sys.path[0] when run as a script
from prn_lightning.data.datasets import EvalDataset
from prn_lightning.models.prn.lightning_module import PRNModule
from prn_lightning.models.prn.network import NUM_PROTOTYPE_STAGES
from prn_lightning.models.prn.residual import prototype_residual

RESIDUAL_TOPK = 10
STAGES = tuple(range(NUM_PROTOTYPE_STAGES))


def image_scores(module: PRNModule, loader: DataLoader) -> dict[str, np.ndarray]:
    """`prn`, `res_0..2` per image, with `label`."""
    network = module.network
    parts = defaultdict(list)
    with torch.inference_mode():
        for batch in loader:
            images = batch["image"]
            parts["prn"].append(module.predict_images(images)[1])
            features = network.features(images)
            for j in STAGES:
                residual = prototype_residual(features[j], network.prototypes.nearest(j, features[j]))
                top = residual.mean(1).flatten(1).topk(RESIDUAL_TOPK, dim=1).values.mean(1)
                parts[f"res_{j}"].append(top)
            parts["label"].append(batch["label"])
    return {name: torch.cat(values).float().numpy() for name, values in parts.items()}


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    truth = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return 100 * float(roc_auc_score(truth, np.r_[normal, anomalous]))


def evaluate(run: Path) -> dict[str, float]:
    """Test image AUROC of every score, the seen-vs-validation AUROC of each stage's residual, the stage chosen."""
    cfg, datamodule, module = finished_run(run, "fit")
    if module.network.prototypes is None:
        sys.exit(f"{run}: trained with model.use_prototypes=false, so it has no prototype residual to score")
    batch_size = int(cfg.data.eval_batch_size)
    val = image_scores(module, datamodule.val_dataloader())
    test = image_scores(module, datamodule.test_dataloader())
    seen_set = EvalDataset(datamodule.seen_anomalies, datamodule.image_size, datamodule.defect_types,
                           resize=datamodule.resize)
    seen = image_scores(module, DataLoader(seen_set, batch_size=batch_size))
    normals = {name: values[val["label"] == 0] for name, values in val.items()}

    def standardised(name: str, values: np.ndarray) -> np.ndarray:
        return (values - normals[name].mean()) / normals[name].std()

    out = {"seen_res_" + str(j): auroc(normals[f"res_{j}"], seen[f"res_{j}"]) for j in STAGES}
    chosen = max(STAGES, key=lambda j: out[f"seen_res_{j}"])
    is_normal, is_anomalous = test["label"] == 0, test["label"] == 1
    scores = {"prn": test["prn"]} | {f"res_{j}": test[f"res_{j}"] for j in STAGES}
    # above 50: the test normals score higher than the validation normals, a shift a one-class term reads as anomaly
    out |= {f"shift_{name}": auroc(normals[name], values[is_normal]) for name, values in scores.items()}
    scores |= {f"prn+res_{j}": standardised("prn", test["prn"]) + standardised(f"res_{j}", test[f"res_{j}"])
               for j in STAGES}
    out |= {name: auroc(values[is_normal], values[is_anomalous]) for name, values in scores.items()}
    out["chosen_stage"] = chosen
    out["prn+res_chosen"] = out[f"prn+res_{chosen}"]
    return out


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    missing = [r for r in runs if not (r / "checkpoints" / "best.ckpt").is_file()]
    if not runs or missing:
        sys.exit(f"pass finished run folders (with checkpoints/best.ckpt); not one: {', '.join(map(str, missing))}"
                 if missing else __doc__.strip().splitlines()[-1].strip())
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in runs:
        figures = evaluate(run)
        groups[run.parent.name].append(figures)
        print(f"{run}: " + ", ".join(f"{k} {v:.1f}" if k != "chosen_stage" else f"{k} {v}"
                                     for k, v in figures.items()), flush=True)
    columns = ["prn", "prn+res_chosen", *(f"res_{j}" for j in STAGES), *(f"prn+res_{j}" for j in STAGES)]
    print("\n| set | runs | " + " | ".join(columns) + " | stage chosen (seen vs validation normals) |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " | --- |")
    for name, rows in groups.items():
        cells = [f"{np.mean([r[c] for r in rows]):.1f}" for c in columns]
        chosen = ", ".join(str(int(r["chosen_stage"])) for r in rows)
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {chosen} |")


if __name__ == "__main__":
    main()
