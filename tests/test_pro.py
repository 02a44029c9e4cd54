"""AUPRO: a value checked on paper, a brute-force reference on random data with ties, 8-connectivity, the
interpolation at the FPR limit, and independence from how images are split into updates."""
from __future__ import annotations

from bisect import bisect

import numpy as np
import pytest
import torch
from scipy import ndimage

from prn_lightning.metrics import AUPRO, AnomalyMetrics
from prn_lightning.metrics.regions import label_regions

EIGHT = np.ones((3, 3), dtype=int)
FOUR = ndimage.generate_binary_structure(2, 1)


def reference_aupro(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float,
    structure: np.ndarray = EIGHT,
    region_images: np.ndarray | None = None,
) -> float:
    """Brute force: threshold at every distinct score, count pixels directly, integrate like MVTec's trapezoid.

    region_images: which images' regions are averaged (default all); the FPR always counts every normal pixel.
    """
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure)
        if region_images is None or region_images[i]:
            for k in range(1, count + 1):
                region = np.zeros(masks.shape, dtype=bool)
                region[i] = labelled == k
                regions.append(region)
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([(above & region).sum() / region.sum() for region in regions]))
    x, y = np.array(fprs + [1.0]), np.array(pros + [1.0])
    # MVTec AD generic_util.trapezoid(x, y, x_max)
    correction = 0.0
    if fpr_limit not in x:
        ins = bisect(x, fpr_limit)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (fpr_limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (fpr_limit - x[ins - 1])
    keep = x <= fpr_limit
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / fpr_limit


def hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4x4 images, 20 normal pixels, two regions: R1 = 4 pixels (image 0), R2 = 8 pixels (image 1).

    Scores (R1 pixels / R2 pixels / normal pixels at each score):
        0.9: 2 / 0 / 0      0.8: 0 / 4 / 2      0.5: 1 / 2 / 4      0.1: 1 / 2 / 14
    Cumulative (FPR = normal above / 20, PRO = mean(R1 fraction, R2 fraction)):
        t=0.9: FPR 0.0, PRO (2/4 + 0/8)/2 = 0.25
        t=0.8: FPR 0.1, PRO (2/4 + 4/8)/2 = 0.5   (the tie at 0.8 holds region and normal pixels: one step)
        t=0.5: FPR 0.3, PRO (3/4 + 6/8)/2 = 0.75
        t=0.1: FPR 1.0, PRO 1
    Curve (0,0) (0,0.25) (0.1,0.5) (0.3,0.75) (1,1) (1,1).
    Limit 0.3 (a curve point): area = 0.1 * (0.25 + 0.5)/2 + 0.2 * (0.5 + 0.75)/2 = 0.0375 + 0.125 = 0.1625,
        AUPRO = 0.1625 / 0.3 = 0.541666...
    Limit 0.2 (between points): PRO(0.2) = 0.5 + (0.75 - 0.5) * (0.2 - 0.1)/(0.3 - 0.1) = 0.625,
        area = 0.0375 + 0.1 * (0.5 + 0.625)/2 = 0.09375, AUPRO = 0.09375 / 0.2 = 0.46875.
    """
    masks = torch.zeros(2, 4, 4)
    maps = torch.full((2, 4, 4), 0.1)
    masks[0, 0, :] = 1                  # R1: top row of image 0
    maps[0, 0, :3] = torch.tensor([0.9, 0.9, 0.5])
    masks[1, 2:, :] = 1                 # R2: bottom two rows of image 1
    maps[1, 2, :] = 0.8
    maps[1, 3, :2] = 0.5
    maps[0, 2, 0:2] = 0.8               # two normal pixels at 0.8
    maps[0, 3, 0:4] = 0.5               # four normal pixels at 0.5
    return maps, masks


@pytest.mark.parametrize(("fpr_limit", "expected"), [(0.3, 0.1625 / 0.3), (0.2, 0.46875)])
def test_hand_computed_example(fpr_limit: float, expected: float) -> None:
    maps, masks = hand_example()
    metric = AUPRO(fpr_limit=fpr_limit)
    metric.update(maps, masks)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)
    assert reference_aupro(maps.numpy(), masks.numpy(), fpr_limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_matches_brute_force_reference_with_ties(seed: int, fpr_limit: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(5, 12, 12, generator=generator) > 0.85  # many small regions, some diagonal-only
    masks[0] = False                                            # one normal image
    maps = torch.round((torch.rand(masks.shape, generator=generator) + 0.3 * masks) * 10) / 10  # ~14 scores
    metric = AUPRO(fpr_limit=fpr_limit)
    metric.update(maps, masks)
    expected = reference_aupro(maps.numpy(), masks.numpy(), fpr_limit)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)


def test_diagonal_pixels_form_one_region() -> None:
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 1] = True  # a diagonal step, then a vertical pair
    mask[0, 4, 4] = True                                   # a separate single pixel
    sizes, counts = label_regions(mask)
    assert counts.tolist() == [2] and sizes.tolist() == [3, 3, 3, 1]
    # With 4-connectivity the step would split into regions of 1 and 2 pixels: the PRO value tells them apart.
    maps = torch.zeros(1, 5, 5)
    maps[0, 0, 0] = 1.0
    metric = AUPRO()
    metric.update(maps, mask)
    eight, four = (reference_aupro(maps.numpy(), mask.numpy(), 0.3, s) for s in (EIGHT, FOUR))
    assert metric.compute().item() == pytest.approx(eight, abs=1e-12)
    assert abs(eight - four) > 0.05


def test_limit_interpolation_between_curve_points() -> None:
    """Between two curve points the area grows by a trapezoid up to the linearly interpolated PRO."""
    maps, masks = hand_example()
    for fpr_limit in (0.15, 0.25, 0.3, 0.65, 1.0):
        metric = AUPRO(fpr_limit=fpr_limit)
        metric.update(maps, masks)
        assert metric.compute().item() == pytest.approx(reference_aupro(maps.numpy(), masks.numpy(), fpr_limit))
    # By hand at 0.15: PRO(0.15) = 0.5625, area = 0.0375 + 0.05 * (0.5 + 0.5625) / 2 = 0.064062.
    metric = AUPRO(fpr_limit=0.15)
    metric.update(maps, masks)
    assert metric.compute().item() == pytest.approx((0.0375 + 0.05 * 1.0625 / 2) / 0.15, abs=1e-12)


def test_split_updates_equal_one_update() -> None:
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(7, 10, 10, generator=generator) > 0.8
    maps = torch.round(torch.rand(masks.shape, generator=generator) * 20) / 20 + 0.1 * masks
    whole, split = AUPRO(), AUPRO()
    whole.update(maps, masks)
    for part in (slice(0, 1), slice(1, 4), slice(4, 7)):
        split.update(maps[part], masks[part])
    assert split.compute().item() == pytest.approx(whole.compute().item(), abs=1e-12)
    assert whole.compute().item() == pytest.approx(reference_aupro(maps.numpy(), masks.numpy(), 0.3), abs=1e-12)


def test_per_defect_pro_uses_the_types_regions_and_all_normal_pixels() -> None:
    generator = torch.Generator().manual_seed(4)
    masks = torch.rand(6, 10, 10, generator=generator) > 0.85
    masks[:2] = False
    maps = torch.round((torch.rand(masks.shape, generator=generator) + 0.2 * masks) * 10) / 10
    labels = masks.flatten(1).any(1)
    defect_ids = torch.tensor([-1, -1, 0, 1, 0, 1])
    metrics = AnomalyMetrics(["crack", "hole"])
    metrics.update(maps, masks, maps.flatten(1).amax(1), labels, defect_ids)
    rows = metrics.per_defect()
    for defect_id, row in enumerate(rows):
        of_type = (defect_ids == defect_id).numpy()
        expected = reference_aupro(maps.numpy(), masks.numpy(), 0.3, region_images=of_type)
        assert row["pro"] == pytest.approx(expected, abs=1e-12)
        assert row["num_images"] == 2
    assert sum(row["num_regions"] for row in rows) == int(label_regions(masks)[1].sum())


def test_no_region_gives_nan_with_a_warning() -> None:
    metric = AUPRO()
    metric.update(torch.rand(2, 6, 6), torch.zeros(2, 6, 6))
    with pytest.warns(UserWarning, match="PRO is undefined with 0 ground-truth regions"):
        assert torch.isnan(metric.compute())


def test_plotted_pro_curve_ends_at_the_exact_interpolated_point() -> None:
    generator = torch.Generator().manual_seed(9)
    masks = torch.rand(4, 40, 40, generator=generator) > 0.9
    masks[0] = False
    maps = torch.rand(masks.shape, generator=generator) + 0.3 * masks  # 6,400 distinct scores: subsampled
    labels = masks.flatten(1).any(1)
    metrics = AnomalyMetrics(["crack", "hole"])  # the plot averages over all regions, not the last type's
    metrics.update(maps, masks, maps.flatten(1).amax(1), labels, torch.tensor([-1, 0, 1, 1]))
    plotted = metrics.curves()["pro"]
    fpr, pro = reference_pro_curve_end(maps.numpy(), masks.numpy(), 0.3)
    assert plotted["fpr"][-1] == pytest.approx(fpr, abs=1e-12) and plotted["pro"][-1] == pytest.approx(pro, abs=1e-12)
    assert len(plotted["fpr"]) < 2100


def reference_pro_curve_end(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> tuple[float, float]:
    """(fpr_limit, PRO interpolated there) by thresholding at every distinct score down to the limit."""
    region_ids, offset = np.zeros(masks.shape, dtype=int), 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, EIGHT)
        region_ids[i] = np.where(labelled > 0, labelled + offset, 0)
        offset += count
    sizes = np.bincount(region_ids.ravel())[1:]
    normal = ~masks
    points = []
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        overlaps = np.bincount(region_ids[above], minlength=offset + 1)[1:] / sizes
        points.append(((above & normal).sum() / normal.sum(), overlaps.mean()))
        if points[-1][0] > fpr_limit:
            break
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return fpr_limit, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
