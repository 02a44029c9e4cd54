"""Metric state handling shared by the exact metrics: concatenating list states and storing every test pixel.

Exact, unbinned metrics need every score. States are lists of 1-D tensors reduced with "cat", so DDP gathers them
(uneven sizes included) and images of different sizes simply concatenate.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from prn_lightning.metrics.inputs import as_image_batch, check_binary, check_same_shape, check_scores
from prn_lightning.metrics.ranking import RankingCurve, ranking_curve


def concatenated(metric: Metric, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """One tensor holding a list state, which is merged in place so a large state is held only once.

    After a DDP sync the state is already a tensor. `dtype` restores the dtype of an empty rank's placeholder.
    """
    value = getattr(metric, name)
    if isinstance(value, list):
        if len(value) > 1:
            value = [torch.cat(value)]
            setattr(metric, name, value)
        value = value[0] if value else torch.empty(0, dtype=dtype or torch.float32, device=metric.device)
    return value if dtype is None else value.to(dtype)


class PixelMetric(Metric):
    """Base of the pixel-level metrics: keeps each pixel's score and mask value, flattened."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("maps", default=[], dist_reduce_fx="cat")
        self.add_state("masks", default=[], dist_reduce_fx="cat")

    @staticmethod
    def _check_pixels(anomaly_maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Validated (B, H, W) maps (float32/64) and masks (bool)."""
        anomaly_maps = check_scores(as_image_batch(anomaly_maps, "anomaly_maps"), "anomaly_maps")
        masks = check_binary(as_image_batch(masks, "masks"), "masks")
        check_same_shape(anomaly_maps, masks, "anomaly_maps", "masks")
        return anomaly_maps, masks

    def _append_pixels(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        """Store copies: a caller editing its maps in place afterwards (e.g. to draw them) must not alter results."""
        self.maps.append(anomaly_maps.detach().flatten().clone())
        self.masks.append(masks.flatten().clone())

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        """anomaly_maps: float (B, H, W), higher = more anomalous; masks: (B, H, W) in {0, 1}."""
        self._append_pixels(*self._check_pixels(anomaly_maps, masks))

    def _pixel_curve(self) -> RankingCurve:
        return ranking_curve(concatenated(self, "maps"), concatenated(self, "masks", torch.bool))
