"""AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit, divided by the limit.

Semantics of MVTec AD's official evaluation (`pro_curve_util.compute_pro` + `generic_util.trapezoid`):
- regions are the 8-connected components of each ground-truth mask; all regions of all test images count;
- FPR at a threshold = fraction of ALL normal pixels (normal images and the normal pixels of anomalous images)
  scoring >= threshold;
- PRO at a threshold = mean over regions of the fraction of the region's pixels scoring >= threshold;
- every distinct score is a threshold (ties are one step), from one global sort; the curve runs from (0, 0) to (1, 1)
  and is integrated with trapezoids up to `fpr_limit`, with y linearly interpolated at the limit.
Differences: FPRs are float64 (MVTec casts to float32), and undefined cases (no region, no normal pixel) give nan
with a warning instead of a crash.

Derived values: a perfect map gives 1, an inverted perfect map 0, and a constant map 0.15 for fpr_limit 0.3
(its curve is the diagonal (0, 0)-(1, 1), whose area up to x is x^2 / 2, so the normalised area is fpr_limit / 2).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from prn_lightning.metrics.inputs import MetricInputError
from prn_lightning.metrics.ranking import RankingCurve
from prn_lightning.metrics.regions import label_regions
from prn_lightning.metrics.states import PixelMetric, concatenated
from prn_lightning.torch_threads import on_one_intra_op_thread


def check_fpr_limit(fpr_limit: float) -> float:
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise MetricInputError(f"`fpr_limit` must be in (0, 1], got {fpr_limit!r} (MVTec AD uses 0.3)")
    return float(fpr_limit)


def pro_curve(
    curve: RankingCurve, inverse_region_sizes: Tensor, num_regions: int, tps: Tensor, fps: Tensor
) -> tuple[Tensor, Tensor]:
    """(fpr, pro) at the threshold steps with the given counts, between (0, 0) and (1, 1), float64.

    Args:
        curve: the pixel ranking curve (positives = mask pixels).
        inverse_region_sizes: (P,) for each mask pixel, in the order of `scores[labels]`, 1 / size of its region;
            0 for pixels whose region is not counted (per-defect PRO).
        num_regions: number of regions counted.
        tps, fps: int64 counts of mask and normal pixels at or above each step's threshold, ascending.
    """
    # overlap[k]: summed 1 / region size of the k highest-scoring mask pixels; at a step, k = its true positives.
    overlap = torch.nn.functional.pad(inverse_region_sizes.double()[curve.positive_order].cumsum(0), (1, 0))
    pro = overlap[tps] / num_regions
    fpr = fps.double() / curve.num_negatives
    zero, one = fpr.new_zeros(1), fpr.new_ones(1)
    # Accumulated rounding must not push the curve past 1 (as in MVTec's script).
    return torch.cat([zero, fpr, one]).clamp_(max=1.0), torch.cat([zero, pro, one]).clamp_(max=1.0)


def cut_curve(x: Tensor, y: Tensor, x_max: float) -> tuple[Tensor, Tensor]:
    """The points with x <= x_max, plus (x_max, y interpolated) when x_max falls between two points.

    x must be ascending (it is an FPR) and span x_max.
    """
    keep = int((x <= x_max).sum())
    x_cut, y_cut = x[:keep], y[:keep]
    if keep < x.numel() and not bool((x_cut == x_max).any()):
        x0, x1, y0, y1 = x[keep - 1], x[keep], y[keep - 1], y[keep]
        y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        x_cut = torch.cat([x_cut, x_cut.new_full((1,), x_max)])
        y_cut = torch.cat([y_cut, y_max.reshape(1)])
    return x_cut, y_cut


def normalised_area(fpr: Tensor, pro: Tensor, fpr_limit: float) -> Tensor:
    """Trapezoid area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit."""
    x, y = cut_curve(fpr, pro, fpr_limit)
    return torch.trapezoid(y, x) / fpr_limit


def aupro(
    curve: RankingCurve,
    inverse_region_sizes: Tensor,
    num_regions: int,
    fpr_limit: float,
    counts: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Normalised AUPRO; nan with a warning when there is no region or no normal pixel (PRO is undefined).

    counts: `area_counts(curve, fpr_limit)` when already at hand (they depend on the curve only, not the regions).
    """
    if num_regions == 0 or curve.num_negatives == 0:
        rank_zero_warn(
            f"PRO is undefined with {num_regions} ground-truth regions and {curve.num_negatives} normal pixels; "
            "returning nan."
        )
        return torch.tensor(float("nan"), dtype=torch.float64, device=curve.values.device)
    tps, fps = area_counts(curve, fpr_limit) if counts is None else counts
    return normalised_area(*pro_curve(curve, inverse_region_sizes, num_regions, tps, fps), fpr_limit)


def area_counts(curve: RankingCurve, fpr_limit: float) -> tuple[Tensor, Tensor]:
    """(tps, fps) of the steps that shape the PRO curve up to `fpr_limit`, in curve order: every step holding mask
    pixels, the step before each, and the two steps around the limit. In between, PRO is constant while the FPR grows
    (horizontal segments), so the trapezoid area equals the one over all steps, at a cost in mask-pixel scores
    instead of distinct scores. Repeated steps only add zero-width trapezoids."""
    after = curve.threshold_after(fpr_limit)
    holding = int((curve.values >= after).sum())  # values descend: the positive steps down to the limit's
    at_tps, at_fps = curve.tps[:holding], curve.fps[:holding]
    before_tps, before_fps = _step_before(curve.tps_above[:holding], curve.fps_above[:holding], at_tps, at_fps)
    tps = torch.stack([before_tps, at_tps], dim=1).flatten()
    fps = torch.stack([before_fps, at_fps], dim=1).flatten()
    if holding == 0 or bool(curve.values[holding - 1] > after[0]):
        after_tps, after_fps = curve.counts(after)
        before_tps, before_fps = _step_before(*curve.counts(after, strictly_above=True), after_tps, after_fps)
        tps = torch.cat([tps, before_tps, after_tps])
        fps = torch.cat([fps, before_fps, after_fps])
    return tps, fps


def _step_before(above_tps: Tensor, above_fps: Tensor, tps: Tensor, fps: Tensor) -> tuple[Tensor, Tensor]:
    """Counts at the step before a step: those scoring strictly above it, except at the first step, which has no
    step before it and keeps its own counts."""
    first = (above_tps == 0) & (above_fps == 0)
    return torch.where(first, tps, above_tps), torch.where(first, fps, above_fps)


class AUPRO(PixelMetric):
    """update(anomaly_maps (B, H, W) float, masks (B, H, W) {0, 1}); compute() -> float64 scalar.

    Regions are labelled at update time (8-connected, per image) and stored as the region size of every mask pixel
    plus the region count of every image: both are intrinsic to an image, so states gather across processes as is.
    """

    def __init__(self, fpr_limit: float = 0.3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fpr_limit = check_fpr_limit(fpr_limit)
        self.add_state("region_sizes", default=[], dist_reduce_fx="cat")
        self.add_state("region_counts", default=[], dist_reduce_fx="cat")

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        anomaly_maps, masks = self._check_pixels(anomaly_maps, masks)
        sizes, counts = label_regions(masks)
        self._append_pixels(anomaly_maps, masks)
        self.region_sizes.append(sizes)
        self.region_counts.append(counts)

    @on_one_intra_op_thread
    def compute(self) -> Tensor:
        curve = self._pixel_curve()
        inverse_sizes = 1.0 / concatenated(self, "region_sizes", torch.float64)
        num_regions = int(concatenated(self, "region_counts", torch.int64).sum())
        return aupro(curve, inverse_sizes, num_regions, self.fpr_limit)
