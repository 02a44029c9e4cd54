"""All test metrics of a run from one set of states: image AUROC, pixel AUROC, pixel AP and AUPRO, per defect type.

The pixels are stored once and sorted once: pixel AUROC, pixel AP and PRO all read the same ranking curve (PRO's FPR
is the pixel ROC's FPR). Per defect type:
- image_auroc: that type's images against ALL normal test images;
- pro: the mean overlap of that type's regions only, with the FPR still over ALL normal pixels of the test set
  (normal images and the normal pixels of every anomalous image), so the x-axis is the same as for the overall PRO.
The evaluation is cached until the next update/reset: after `compute()` (which syncs in DDP on every rank),
`per_defect()` and `curves()` cost nothing and need no collective call. Called first, they sync like `compute()`
and must then run on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from prn_lightning.metrics.inputs import MetricInputError, check_binary, check_scores, check_vector
from prn_lightning.metrics.pro import area_counts, aupro, check_fpr_limit, cut_curve, pro_curve
from prn_lightning.metrics.ranking import (
    RankingCurve,
    auroc,
    average_precision,
    binary_auroc,
    precision_recall,
    ranking_curve,
    roc,
)
from prn_lightning.metrics.regions import label_regions
from prn_lightning.metrics.states import PixelMetric, concatenated
from prn_lightning.torch_threads import on_one_intra_op_thread

MAX_CURVE_POINTS = 2000


@dataclass(frozen=True)
class _Evaluation:
    summary: dict[str, float]
    per_defect: list[dict]
    curves: dict[str, dict[str, np.ndarray]]


def plot_thresholds(curve: RankingCurve, last: Tensor, max_points: int = MAX_CURVE_POINTS) -> Tensor:
    """Descending thresholds of at most ~max_points steps from the first down to the step of threshold `last`, spread
    evenly along both axes (negatives and positives passed), the two last steps included: enough to draw any of the
    curves without all the distinct scores. The first step where a count reaches c is that of the c-th highest
    score of its class (the first step for c = 0)."""
    last_tps, last_fps = curve.counts(last)

    def crossings(ascending: Tensor, count: Tensor) -> Tensor:
        grid = torch.linspace(0, float(count), max_points // 2, dtype=torch.float64, device=ascending.device)
        ranks = grid.ceil().long()
        if ascending.numel() == 0:
            return curve.highest().expand(ranks.numel())
        kth_highest = ascending[(ascending.numel() - ranks).clamp_(max=ascending.numel() - 1)]
        return torch.where(ranks > 0, kth_highest, curve.highest())

    ends = torch.cat([curve.next_higher(last), last])
    points = torch.cat([crossings(curve.negatives, last_fps), crossings(curve.positives, last_tps), ends])
    return torch.unique(points.clamp_(min=last[0])).flip(0)


def _numpy(*tensors: Tensor) -> tuple[np.ndarray, ...]:
    return tuple(t.cpu().numpy() for t in tensors)


class AnomalyMetrics(PixelMetric):
    """Image AUROC, pixel AUROC, pixel AP and AUPRO of a test set, overall and per defect type.

    Args:
        defect_types: names of the anomalous defect types; `defect_ids` index this list ("good" is not in it).
        fpr_limit: FPR up to which the PRO curve is integrated (MVTec AD: 0.3).
    """

    def __init__(self, defect_types: list[str], fpr_limit: float = 0.3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.defect_types = list(defect_types)
        self.fpr_limit = check_fpr_limit(fpr_limit)
        self.add_state("region_sizes", default=[], dist_reduce_fx="cat")
        self.add_state("region_counts", default=[], dist_reduce_fx="cat")
        self.add_state("positive_counts", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("defect_ids", default=[], dist_reduce_fx="cat")
        self._evaluation: _Evaluation | None = None

    def update(
        self, anomaly_maps: Tensor, masks: Tensor, scores: Tensor, labels: Tensor, defect_ids: Tensor
    ) -> None:
        """anomaly_maps float (B, H, W); masks (B, H, W) {0, 1}; scores float (B,); labels (B,) {0, 1};
        defect_ids int (B,): -1 for normal images, else the index of the image's type in `defect_types`."""
        anomaly_maps, masks = self._check_pixels(anomaly_maps, masks)
        scores = check_scores(check_vector(scores, "scores"), "scores")
        labels = check_binary(check_vector(labels, "labels"), "labels")
        defect_ids = check_vector(defect_ids, "defect_ids")
        self._check_image_inputs(masks, scores, labels, defect_ids)
        sizes, counts = label_regions(masks)
        self._append_pixels(anomaly_maps, masks)
        self.region_sizes.append(sizes)
        self.region_counts.append(counts)
        self.positive_counts.append(masks.flatten(1).sum(1, dtype=torch.int64))
        self.scores.append(scores.detach().clone())
        self.labels.append(labels.clone())
        self.defect_ids.append(defect_ids.to(torch.int64, copy=True))
        self._evaluation = None

    def _check_image_inputs(self, masks: Tensor, scores: Tensor, labels: Tensor, defect_ids: Tensor) -> None:
        batch = len(masks)
        for name, x in (("scores", scores), ("labels", labels), ("defect_ids", defect_ids)):
            if len(x) != batch:
                raise MetricInputError(f"`{name}` has {len(x)} entries but `anomaly_maps`/`masks` hold {batch} images")
        if defect_ids.is_floating_point() or defect_ids.dtype == torch.bool:
            raise MetricInputError(f"`defect_ids` must be an integer tensor, got dtype {defect_ids.dtype}")
        out_of_range = (defect_ids < -1) | (defect_ids >= len(self.defect_types))
        if out_of_range.any():
            raise MetricInputError(
                f"`defect_ids` must be -1 (normal) or an index into defect_types {self.defect_types}, "
                f"got {defect_ids[out_of_range][:3].tolist()}"
            )
        if ((defect_ids >= 0) != labels).any():
            raise MetricInputError("`defect_ids` must be -1 exactly for images with label 0 (normal)")
        if (masks.flatten(1).any(1) & ~labels).any():
            raise MetricInputError("`masks` of images with label 0 must be empty; check the labels and mask files")

    def reset(self) -> None:
        super().reset()
        self._evaluation = None

    def compute(self) -> dict[str, float]:
        """{"image_auroc", "pixel_auroc", "pixel_ap", "pro"} as floats (nan where undefined)."""
        return self._evaluate().summary

    def per_defect(self) -> list[dict]:
        """One dict per defect type: defect_type, num_images, num_regions, image_auroc, pro."""
        return self._evaluate_synced().per_defect

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """{"roc": {fpr, tpr}, "pr": {precision, recall}, "pro": {fpr, pro}} as CPU float64 arrays, at most
        ~2,000 points each, for plots only. The PRO curve stops at fpr_limit (the integrated part)."""
        return self._evaluate_synced().curves

    def _evaluate_synced(self) -> _Evaluation:
        if self._evaluation is None:
            with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
                self._evaluate()
        return self._evaluation

    @on_one_intra_op_thread
    def _evaluate(self) -> _Evaluation:
        if self._evaluation is not None:
            return self._evaluation
        pixel_curve = self._pixel_curve()
        inverse_sizes = 1.0 / concatenated(self, "region_sizes", torch.float64)
        region_counts = concatenated(self, "region_counts", torch.int64)
        scores = concatenated(self, "scores")
        labels = concatenated(self, "labels", torch.bool)
        defect_ids = concatenated(self, "defect_ids", torch.int64)
        pixel_defect_ids = torch.repeat_interleave(defect_ids, concatenated(self, "positive_counts", torch.int64))
        image_curve = ranking_curve(scores, labels)
        num_regions = int(region_counts.sum())

        pro_counts = area_counts(pixel_curve, self.fpr_limit) if pixel_curve.num_negatives else None
        summary = {
            "image_auroc": auroc(image_curve).item(),
            "pixel_auroc": auroc(pixel_curve).item(),
            "pixel_ap": average_precision(pixel_curve).item(),
            "pro": aupro(pixel_curve, inverse_sizes, num_regions, self.fpr_limit, pro_counts).item(),
        }
        per_defect = []
        for defect_id, defect_type in enumerate(self.defect_types):
            of_type = defect_ids == defect_id
            num_images, type_regions = int(of_type.sum()), int(region_counts[of_type].sum())
            image_auroc = pro = float("nan")
            if num_images:
                versus_normal = of_type | ~labels
                image_auroc = binary_auroc(scores[versus_normal], labels[versus_normal]).item()
                type_sizes = torch.where(pixel_defect_ids == defect_id, inverse_sizes, 0.0)
                pro = aupro(pixel_curve, type_sizes, type_regions, self.fpr_limit, pro_counts).item()
            per_defect.append(
                {
                    "defect_type": defect_type,
                    "num_images": num_images,
                    "num_regions": type_regions,
                    "image_auroc": image_auroc,
                    "pro": pro,
                }
            )
        self._evaluation = _Evaluation(summary, per_defect, self._curves(pixel_curve, inverse_sizes, num_regions))
        return self._evaluation

    def _curves(self, curve: RankingCurve, inverse_sizes: Tensor, num_regions: int) -> dict[str, dict]:
        empty = np.empty(0)
        fpr = tpr = precision = recall = pro_fpr = pro = empty
        if curve.num_positives + curve.num_negatives:
            thresholds = plot_thresholds(curve, curve.lowest())
            fpr, tpr = _numpy(*roc(curve, thresholds))
            precision, recall = _numpy(*precision_recall(curve, thresholds))
        if num_regions and curve.num_negatives:
            # The PRO plot stops at the limit, interpolated between the same two steps as the exact area.
            tps, fps = curve.counts(plot_thresholds(curve, curve.threshold_after(self.fpr_limit)))
            pro_fpr, pro = _numpy(*cut_curve(*pro_curve(curve, inverse_sizes, num_regions, tps, fps), self.fpr_limit))
        return {
            "roc": {"fpr": fpr, "tpr": tpr},
            "pr": {"precision": precision, "recall": recall},
            "pro": {"fpr": pro_fpr, "pro": pro},
        }
