"""Pixel-level AUROC over every pixel of every test image, exact (one threshold per distinct score)."""
from __future__ import annotations

from torch import Tensor

from prn_lightning.metrics.ranking import auroc
from prn_lightning.metrics.states import PixelMetric
from prn_lightning.torch_threads import on_one_intra_op_thread


class PixelAUROC(PixelMetric):
    """update(anomaly_maps (B, H, W) float, masks (B, H, W) {0, 1}); compute() -> float64 scalar (nan if undefined)."""

    @on_one_intra_op_thread
    def compute(self) -> Tensor:
        return auroc(self._pixel_curve())
