"""Exact, unbinned ranking metrics (AUROC, average precision) with sklearn's tie semantics, from one sort.

Every distinct score is a threshold and tied scores are one threshold step (sklearn's `_binary_clf_curve`). AUROC,
average precision and PRO only change at steps holding a positive, so the curve is materialised there alone: the
negatives are sorted once (values only) and the positives argsorted (a few percent of the pixels); the number of
negatives at or above any threshold is then a `searchsorted`, and no array as long as the number of distinct scores
is ever built. On CPU the sorts run in NumPy (SIMD sort, ~10x torch.sort), elsewhere in torch, so tensors stay on
their device. Counts are int64 (AUROC's area is an exact integer sum) and everything else float64.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

PARALLEL_SORT_MIN = 1 << 20  # below ~1 M scores one sort is quicker than splitting


@dataclass(frozen=True)
class RankingCurve:
    """The ROC ranking of N scores: counts at each distinct positive score (highest first) and at any threshold.

    The curve's steps are the distinct scores, highest first; at a step, tps/fps count the positives/negatives
    scoring >= its score. The step before a positive's step is the next higher distinct score, so its counts are
    those scoring strictly above.
    """

    negatives: Tensor       # (N - P,) the negatives' scores, ascending
    positives: Tensor       # (P,) the positives' scores, ascending
    positive_order: Tensor  # (P,) int64: argsort of scores[labels], descending (shared with PRO)
    values: Tensor          # (S,) the distinct positive scores, descending
    tps: Tensor             # (S,) int64: positives scoring >= values
    fps: Tensor             # (S,) int64: negatives scoring >= values
    tps_above: Tensor       # (S,) int64: positives scoring > values
    fps_above: Tensor       # (S,) int64: negatives scoring > values

    @property
    def num_positives(self) -> int:
        return self.positives.numel()

    @property
    def num_negatives(self) -> int:
        return self.negatives.numel()

    def counts(self, thresholds: Tensor, strictly_above: bool = False) -> tuple[Tensor, Tensor]:
        """(tps, fps) int64: positives and negatives scoring >= (or >) each threshold."""
        side = "right" if strictly_above else "left"
        thresholds = thresholds.to(self.negatives.dtype)
        tps = self.num_positives - torch.searchsorted(self.positives, thresholds, side=side)
        fps = self.num_negatives - torch.searchsorted(self.negatives, thresholds, side=side)
        return tps, fps

    def highest(self) -> Tensor:
        """The highest score (the first step's threshold), a 1-element tensor."""
        return torch.cat([self.negatives[-1:], self.positives[-1:]]).amax().reshape(1)

    def lowest(self) -> Tensor:
        """The lowest score (the last step's threshold), a 1-element tensor."""
        return torch.cat([self.negatives[:1], self.positives[:1]]).amin().reshape(1)

    def next_higher(self, threshold: Tensor) -> Tensor:
        """The next higher distinct score after a 1-element threshold, or the threshold itself at the top."""
        above = [
            sorted_scores[torch.searchsorted(sorted_scores, threshold, side="right")[0]:][:1]
            for sorted_scores in (self.negatives, self.positives)
        ]
        above = torch.cat(above)
        return above.amin().reshape(1) if above.numel() else threshold

    def threshold_after(self, fpr: float) -> Tensor:
        """The threshold of the first step whose FPR (fps / num_negatives in float64) exceeds `fpr`, else the last
        step's; a 1-element tensor. FPR only grows at negatives: the step is the k-th highest negative, k the least
        count whose FPR exceeds `fpr`."""
        guess = math.floor(fpr * self.num_negatives)
        for k in range(max(guess - 2, 1), guess + 4):
            if k <= self.num_negatives and k / self.num_negatives > fpr:
                return self.negatives[self.num_negatives - k].reshape(1)
        return self.lowest()


def _sorts_on_numpy(x: Tensor) -> bool:
    """NumPy sorts CPU tensors ~10x faster than torch.sort; other devices use torch."""
    return x.device.type == "cpu"


def split_sorted(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(the negatives' scores ascending, the positives' scores unsorted) of flat scores and bool labels, on their
    device. On CPU the split runs in NumPy too (boolean indexing there is ~10x torch's)."""
    if _sorts_on_numpy(scores):
        scores, labels = scores.detach().contiguous().numpy(), labels.contiguous().numpy()
        return torch.from_numpy(_sorted_negatives(scores, labels)), torch.from_numpy(scores[labels])
    return torch.sort(scores[~labels]).values, scores[labels]


def _sorted_negatives(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The scores where `labels` is False, ascending. A large set is first partitioned in place around its median
    (O(n), no extra memory), then both halves are sorted on two threads (NumPy's sort releases the GIL): the same
    array as one sort, in less time when two cores are free."""
    negatives = scores[~labels]
    if negatives.size < PARALLEL_SORT_MIN or (os.cpu_count() or 1) < 2:
        negatives.sort()
        return negatives
    half = negatives.size // 2
    negatives.partition(half)  # everything before `half` <= negatives[half] <= everything after it
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(np.ndarray.sort, (negatives[:half], negatives[half:])))
    return negatives


def argsort(x: Tensor) -> Tensor:
    """Ascending int64 argsort of a 1-D tensor, on its device (tie order is irrelevant here)."""
    if _sorts_on_numpy(x):
        return torch.from_numpy(np.argsort(x.detach().contiguous().numpy()).astype(np.int64, copy=False))
    return torch.argsort(x)


def _group_starts(sorted_values: Tensor) -> Tensor:
    """Index of the first element of every run of equal values in a sorted tensor (int64)."""
    is_start = torch.ones(sorted_values.numel(), dtype=torch.bool, device=sorted_values.device)
    torch.ne(sorted_values[1:], sorted_values[:-1], out=is_start[1:])
    return is_start.nonzero().squeeze(1)


def ranking_curve(scores: Tensor, labels: Tensor) -> RankingCurve:
    """The ranking of `scores` (any shape, flattened) against `labels`.

    Args:
        scores: floating scores, higher = more anomalous.
        labels: bool (or 0/1) ground truth of the same number of elements.
    """
    scores = scores.reshape(-1)
    labels = labels.reshape(-1).bool()
    negatives, positive_scores = split_sorted(scores, labels)
    order = argsort(positive_scores).flip(0)
    descending = positive_scores[order]
    starts = _group_starts(descending)
    values = descending[starts]
    tps_above = starts  # the positives before a group's first one all score higher
    tps = torch.cat([starts[1:], starts.new_full((1,), descending.numel())])
    return RankingCurve(
        negatives=negatives,
        positives=descending.flip(0),
        positive_order=order,
        values=values,
        tps=tps,
        fps=negatives.numel() - torch.searchsorted(negatives, values),
        tps_above=tps_above,
        fps_above=negatives.numel() - torch.searchsorted(negatives, values, side="right"),
    )


def _nan(curve: RankingCurve) -> Tensor:
    return torch.tensor(float("nan"), dtype=torch.float64, device=curve.values.device)


def auroc(curve: RankingCurve) -> Tensor:
    """Area under the ROC curve (trapezoids between threshold steps, as sklearn's roc_auc_score); float64 scalar.

    Only steps holding positives add area under the trapezoids' upper edge, so the area is summed over those:
    each new positive counts the negatives below it plus half of those tied with it, exactly, in int64.
    nan (with a warning) when there are no positives or no negatives, where AUROC is undefined.
    """
    num_pos, num_neg = curve.num_positives, curve.num_negatives
    if num_pos == 0 or num_neg == 0:
        rank_zero_warn(f"AUROC is undefined with {num_pos} positives and {num_neg} negatives; returning nan.")
        return _nan(curve)
    new_positives = curve.tps - curve.tps_above
    twice_area = (new_positives * (2 * num_neg - curve.fps - curve.fps_above)).sum()
    return twice_area.double() / (2.0 * num_pos * num_neg)


def average_precision(curve: RankingCurve) -> Tensor:
    """sum_n (R_n - R_{n-1}) * P_n over threshold steps (sklearn's average_precision_score); float64 scalar.

    Recall only moves at steps holding positives, so the sum runs over those.
    nan (with a warning) without positives, where recall is undefined.
    """
    num_pos = curve.num_positives
    if num_pos == 0:
        rank_zero_warn("Average precision is undefined without positives; returning nan.")
        return _nan(curve)
    tps = curve.tps.double()
    new_positives = tps - curve.tps_above
    return (new_positives * tps / (tps + curve.fps)).sum() / num_pos


def roc(curve: RankingCurve, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """(fpr, tpr) at the given thresholds, after the start point (0, 0); float64."""
    tps, fps = curve.counts(thresholds)
    zero = tps.new_zeros(1)
    fpr = torch.cat([zero, fps]).double() / max(curve.num_negatives, 1)
    tpr = torch.cat([zero, tps]).double() / max(curve.num_positives, 1)
    return fpr, tpr


def precision_recall(curve: RankingCurve, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """(precision, recall) at the given thresholds (descending: recall ascending) after sklearn's start point
    (recall 0, precision 1); float64."""
    tps, fps = curve.counts(thresholds)
    tps = tps.double()
    one = tps.new_ones(1)
    precision = torch.cat([one, tps / (tps + fps)])
    recall = torch.cat([one - 1, tps / max(curve.num_positives, 1)])
    return precision, recall


def binary_auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Exact AUROC of `scores` against binary `labels`."""
    return auroc(ranking_curve(scores, labels))


def binary_average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Exact average precision of `scores` against binary `labels`."""
    return average_precision(ranking_curve(scores, labels))
