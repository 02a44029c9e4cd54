"""The one list of metric names and their letters, shared by the console, the table, the dashboard, W&B and the
artefacts.

Logged values are `<stage>/<name>` with stage `train`, `val` or `test` (W&B, history.csv, the checkpoint monitor);
files that hold one stage only (metrics.json, per_defect.csv) use the bare name. Run directories written before
this scheme named history columns `train_loss`, `val_pixel_ap`: `stage_key` reads those too.
"""
from __future__ import annotations

from typing import NamedTuple

TRAIN, VAL, TEST = "train", "val", "test"
STAGES = (TRAIN, VAL, TEST)


class MetricName(NamedTuple):
    name: str  # key in metrics.json and after the stage prefix
    letter: str  # the paper's column: I / P / O / A
    title: str


# The paper's order: I / P / O / A.
METRICS = (
    MetricName("image_auroc", "I", "image AUROC"),
    MetricName("pixel_auroc", "P", "pixel AUROC"),
    MetricName("pro", "O", "PRO (FPR <= 0.3)"),
    MetricName("pixel_ap", "A", "pixel AP"),
)
LOSS = "loss"
LEARNING_RATE = "lr"
IMAGE_THRESHOLD = "image_threshold"
# Validation only, when it holds real anomalies (data.num_val_anomalies > 0): their image AUROC against the
# validation normals and their PRO, the signal that sees real defects (the four above mix them with simulated ones).
REAL_IMAGE_AUROC = "real_image_auroc"
REAL_PRO = "real_pro"


def key(stage: str, name: str) -> str:
    """`val/pixel_ap`: the name a value is logged under."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    return f"{stage}/{name}"


def stage_key(column: str) -> str:
    """A history column in the current scheme: `val_pixel_ap` (runs from before it) -> `val/pixel_ap`."""
    stage, sep, name = column.partition("_")
    return key(stage, name) if sep and stage in STAGES else column
