"""Image/pixel AUROC and AP equal sklearn exactly (ties included); boundary properties of all four metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from prn_lightning.metrics import AUPRO, AnomalyMetrics, ImageAUROC, MetricInputError, PixelAP, PixelAUROC, ranking
from prn_lightning.metrics.collection import MAX_CURVE_POINTS
from prn_lightning.metrics.ranking import binary_auroc, binary_average_precision


def blob_masks(generator: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """Binary masks with a random rectangle in the odd images and nothing in the even ones."""
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(1, batch, 2):
        y, x = torch.randint(0, size - 4, (2,), generator=generator).tolist()
        h, w = torch.randint(1, 6, (2,), generator=generator).tolist()
        masks[i, y : y + h, x : x + w] = True
    return masks


def tied_maps(generator: torch.Generator, masks: torch.Tensor, decimals: int = 2) -> torch.Tensor:
    """Scores that are higher inside the masks on average, rounded so that many of them tie."""
    maps = torch.rand(masks.shape, generator=generator, dtype=torch.float64) + 0.4 * masks
    return torch.round(maps * 10**decimals) / 10**decimals


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [1, 2])
def test_image_auroc_matches_sklearn_with_ties(seed: int, decimals: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(301, generator=generator) < 0.3
    scores = torch.round((torch.rand(301, generator=generator) + 0.3 * labels) * 10**decimals) / 10**decimals
    metric = ImageAUROC()
    for chunk in range(0, 301, 64):  # several updates
        metric.update(scores[chunk : chunk + 64], labels[chunk : chunk + 64].long())
    expected = roc_auc_score(labels.numpy(), scores.numpy())
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [2, 3])
def test_pixel_auroc_and_ap_match_sklearn_with_ties(seed: int, decimals: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    masks = blob_masks(generator, 6, 20)
    maps = tied_maps(generator, masks, decimals).float()
    auroc, ap = PixelAUROC(), PixelAP()
    for metric in (auroc, ap):
        metric.update(maps[:4], masks[:4].float())
        metric.update(maps[4:], masks[4:].float())
    y, s = masks.numpy().ravel(), maps.numpy().ravel()
    assert auroc.compute().item() == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ap.compute().item() == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_functional_matches_sklearn_on_distinct_float64_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.1
    scores = rng.normal(size=5000) + labels
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    assert binary_auroc(s, y).item() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert binary_average_precision(s, y).item() == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_anomaly_metrics_match_standalone_metrics_and_sklearn() -> None:
    generator = torch.Generator().manual_seed(7)
    masks = blob_masks(generator, 8, 24)
    maps = tied_maps(generator, masks).float()
    labels = masks.flatten(1).any(1)
    scores = maps.flatten(1).amax(1)
    defect_ids = torch.where(labels, torch.arange(8) % 3, -1)
    metrics, aupro = AnomalyMetrics(["crack", "hole", "scratch"]), AUPRO()
    metrics.update(maps[:5], masks[:5], scores[:5], labels[:5], defect_ids[:5])
    metrics.update(maps[5:], masks[5:], scores[5:], labels[5:], defect_ids[5:])
    aupro.update(maps, masks)
    result = metrics.compute()
    y, s = masks.numpy().ravel(), maps.numpy().ravel()
    assert set(result) == {"image_auroc", "pixel_auroc", "pixel_ap", "pro"}
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert result["pro"] == pytest.approx(aupro.compute().item(), abs=1e-12)
    for row in metrics.per_defect():
        of_type = defect_ids == metrics.defect_types.index(row["defect_type"])
        assert row["num_images"] == int(of_type.sum())
        subset = of_type | ~labels
        expected = roc_auc_score(labels[subset].numpy(), scores[subset].numpy())
        assert row["image_auroc"] == pytest.approx(expected, abs=1e-12)


def perfect_setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    masks = blob_masks(generator, 6, 16)
    labels = masks.flatten(1).any(1)
    defect_ids = torch.where(labels, 0, -1)
    return masks, labels, defect_ids, torch.rand(masks.shape, generator=generator) * 0.5


def test_perfect_map_scores_one_everywhere() -> None:
    masks, labels, defect_ids, noise = perfect_setup()
    maps = noise + masks  # every anomalous pixel above every normal one
    metrics = AnomalyMetrics(["defect"])
    metrics.update(maps, masks, maps.flatten(1).amax(1), labels, defect_ids)
    assert metrics.compute() == {"image_auroc": 1.0, "pixel_auroc": 1.0, "pixel_ap": 1.0, "pro": 1.0}


def test_constant_map_is_chance() -> None:
    """A constant map is one threshold step: ROC and PRO curves are the diagonal, AP is the positive fraction, and
    the PRO area up to 0.3 is 0.3^2 / 2, i.e. 0.15 after dividing by 0.3."""
    masks, labels, defect_ids, _ = perfect_setup()
    maps = torch.full(masks.shape, 0.25)
    metrics = AnomalyMetrics(["defect"])
    metrics.update(maps, masks, torch.zeros(len(masks)), labels, defect_ids)
    result = metrics.compute()
    assert result["image_auroc"] == 0.5 and result["pixel_auroc"] == 0.5
    assert result["pixel_ap"] == pytest.approx(masks.double().mean().item(), abs=1e-12)
    assert result["pro"] == pytest.approx(0.15, abs=1e-12)


def test_inverted_perfect_map_scores_zero() -> None:
    masks, labels, defect_ids, noise = perfect_setup()
    maps = noise - masks.float()
    metrics = AnomalyMetrics(["defect"])
    metrics.update(maps, masks, -labels.float(), labels, defect_ids)
    result = metrics.compute()
    assert result["image_auroc"] == 0.0 and result["pixel_auroc"] == 0.0 and result["pro"] == 0.0


def test_curves_are_subsampled_with_exact_ends() -> None:
    generator = torch.Generator().manual_seed(11)
    masks = blob_masks(generator, 4, 64)
    maps = torch.rand(masks.shape, generator=generator) + 0.5 * masks  # ~16k distinct scores
    labels = masks.flatten(1).any(1)
    metrics = AnomalyMetrics(["defect"])
    metrics.update(maps, masks, maps.flatten(1).amax(1), labels, torch.where(labels, 0, -1))
    curves = metrics.curves()
    for name, (x, y) in {"roc": ("fpr", "tpr"), "pr": ("recall", "precision"), "pro": ("fpr", "pro")}.items():
        assert 100 < len(curves[name][x]) == len(curves[name][y]) <= MAX_CURVE_POINTS
    assert (curves["roc"]["fpr"][[0, -1]] == [0, 1]).all() and (curves["roc"]["tpr"][[0, -1]] == [0, 1]).all()
    assert curves["pr"]["recall"][0] == 0 and curves["pr"]["recall"][-1] == 1
    assert curves["pro"]["fpr"][-1] == pytest.approx(0.3)
    # The exact value does not depend on the plotting subsample.
    area = np.trapezoid(curves["roc"]["tpr"], curves["roc"]["fpr"])
    assert area == pytest.approx(metrics.compute()["pixel_auroc"], abs=1e-3)


def test_undefined_metrics_are_nan_with_a_warning() -> None:
    metrics = AnomalyMetrics(["defect"])
    maps = torch.rand(2, 8, 8)
    with pytest.warns(UserWarning, match="undefined"):
        metrics.update(maps, torch.zeros(2, 8, 8), maps.flatten(1).amax(1), torch.zeros(2), torch.full((2,), -1))
        result = metrics.compute()
    assert all(np.isnan(v) for v in result.values())


def test_channel_dimension_and_integer_masks_are_accepted() -> None:
    generator = torch.Generator().manual_seed(5)
    masks = blob_masks(generator, 4, 12)
    maps = tied_maps(generator, masks).float()
    squeezed, with_channel = PixelAUROC(), PixelAUROC()
    squeezed.update(maps, masks)
    with_channel.update(maps[:, None], masks[:, None].to(torch.uint8))
    assert squeezed.compute().item() == with_channel.compute().item()


@pytest.mark.parametrize(
    ("maps", "masks", "message"),
    [
        (torch.rand(2, 8, 8), torch.rand(2, 8, 8), "only 0 and 1"),
        (torch.full((2, 8, 8), float("nan")), torch.zeros(2, 8, 8), "NaN"),
        (torch.rand(2, 8, 8), torch.zeros(2, 8, 9), "same shape"),
        (torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), r"\(B, H, W\)"),
        (torch.randint(0, 2, (2, 8, 8)), torch.zeros(2, 8, 8), "floating-point"),
    ],
)
def test_bad_pixel_inputs_raise_one_clear_error(maps, masks, message) -> None:
    with pytest.raises(MetricInputError, match=message):
        AUPRO().update(maps, masks)


def test_inconsistent_image_inputs_raise_one_clear_error() -> None:
    metrics = AnomalyMetrics(["crack"])
    maps, masks = torch.rand(2, 8, 8), torch.zeros(2, 8, 8)
    masks[1, 2, 2] = 1
    scores, labels = torch.rand(2), torch.tensor([0, 1])
    with pytest.raises(MetricInputError, match="index into defect_types"):
        metrics.update(maps, masks, scores, labels, torch.tensor([-1, 1]))
    with pytest.raises(MetricInputError, match="-1 exactly"):
        metrics.update(maps, masks, scores, labels, torch.tensor([0, 0]))
    with pytest.raises(MetricInputError, match="label 0 must be empty"):
        metrics.update(maps, masks, scores, torch.tensor([0, 0]), torch.tensor([-1, -1]))
    with pytest.raises(MetricInputError, match="3 entries"):
        metrics.update(maps, masks, torch.rand(3), labels, torch.tensor([-1, 0]))
    assert not metrics.maps  # nothing was stored by the refused updates


def test_torch_sort_path_used_off_cpu_gives_the_same_values(monkeypatch) -> None:
    """CUDA tensors are sorted with torch instead of NumPy; force that path on CPU and compare with sklearn."""
    monkeypatch.setattr(ranking, "_sorts_on_numpy", lambda x: False)
    generator = torch.Generator().manual_seed(2)
    masks = blob_masks(generator, 6, 20)
    maps = tied_maps(generator, masks).float()
    labels = masks.flatten(1).any(1)
    scores = maps.flatten(1).amax(1)
    metrics = AnomalyMetrics(["defect"])
    metrics.update(maps, masks, scores, labels, torch.where(labels, 0, -1))
    result = metrics.compute()
    y, s = masks.numpy().ravel(), maps.numpy().ravel()
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)
    monkeypatch.undo()
    numpy_sorted = AUPRO()
    numpy_sorted.update(maps, masks)
    assert result["pro"] == pytest.approx(numpy_sorted.compute().item(), abs=1e-12)


def test_editing_inputs_after_update_does_not_change_results() -> None:
    generator = torch.Generator().manual_seed(8)
    masks = blob_masks(generator, 4, 12)
    maps = tied_maps(generator, masks).float()
    labels = masks.flatten(1).any(1)
    scores, defect_ids = maps.flatten(1).amax(1), torch.where(labels, 0, -1)
    metrics = AnomalyMetrics(["defect"])
    metrics.update(maps, masks, scores, labels, defect_ids)
    expected = AnomalyMetrics(["defect"])
    expected.update(maps.clone(), masks.clone(), scores.clone(), labels.clone(), defect_ids.clone())
    for tensor in (maps, scores):
        tensor.mul_(-1)  # e.g. a caller rescaling maps in place to draw them
    masks.logical_not_()
    labels.logical_not_()
    assert metrics.compute() == expected.compute()
