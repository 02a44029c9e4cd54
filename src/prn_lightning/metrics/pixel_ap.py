"""Pixel-level average precision (sklearn's average_precision_score semantics, not a trapezoid over the PR curve)."""
from __future__ import annotations

from torch import Tensor

from prn_lightning.metrics.ranking import average_precision
from prn_lightning.metrics.states import PixelMetric
from prn_lightning.torch_threads import on_one_intra_op_thread


class PixelAP(PixelMetric):
    """update(anomaly_maps (B, H, W) float, masks (B, H, W) {0, 1}); compute() -> float64 scalar (nan if undefined)."""

    @on_one_intra_op_thread
    def compute(self) -> Tensor:
        return average_precision(self._pixel_curve())
