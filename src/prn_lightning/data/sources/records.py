"""The one sample record every dataset adapter returns, and the splits of one category.

Adapters (MVTec-layout folder, MVTec AD, BTAD, DAGM, KolektorSDD2, the synthetic set) all reduce their native
layout to these records, so everything downstream (seen-anomaly draw, synthesis, datamodule, metrics) is
dataset-agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NORMAL = 0
ANOMALOUS = 1
GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its mask (None for normal images), label (0 normal, 1 anomalous), defect type."""

    image_path: Path
    mask_path: Path | None
    label: int
    defect_type: str = GOOD


@dataclass
class CategorySplits:
    """All samples of one category, before the seen-anomaly draw moves some test anomalies to training."""

    dataset: str
    category: str
    root: Path
    train: list[Sample]            # normal training images (train/good)
    test: list[Sample]             # the whole test split: normals and anomalies
    is_texture: bool | None = None  # True: whole image is foreground; None: estimate it

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.test if s.label == ANOMALOUS})
