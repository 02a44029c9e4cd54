"""The embedded synthetic dataset: layout, exact masks, visible defects, determinism, generate-once, and not trivially
separable."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from prn_lightning.data.sources.folder import read_folder_category
from prn_lightning.data.sources.records import ANOMALOUS
from prn_lightning.data.sources.registry import load_category
from prn_lightning.data.sources.synthetic import (
    DEFECTS,
    GENERATOR_VERSION,
    MARKER,
    VISIBLE_GREY_LEVELS,
    defect_visibility,
    ensure_synthetic,
    generate_synthetic,
    render_sample,
)
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.io import read_image, read_mask

SMALL = {"num_train": 2, "num_test_good": 1, "num_per_defect": 1}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    """The default dataset (seed 0, 256 px), generated once for this module through ensure_synthetic."""
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic") / "data", seed=0)


@pytest.mark.parametrize("category", ["texture", "object"])
def test_layout_counts_and_masks(default_root, category):
    splits = load_category({"dataset": "synthetic", "root": str(default_root), "category": category})
    assert len(splits.train) == 80 and splits.is_texture == (category == "texture")
    assert splits.defect_types == sorted(DEFECTS[category])
    assert sum(s.label == 0 for s in splits.test) == 30
    for defect in DEFECTS[category]:
        assert sum(s.defect_type == defect for s in splits.test) == 10
    for sample in splits.test[::7]:
        image = read_image(sample.image_path)
        assert image.shape == (256, 256, 3)
        if sample.label == ANOMALOUS:
            mask = read_mask(sample.mask_path)
            assert mask.shape == (256, 256) and 4 <= mask.sum() < 0.05 * mask.size  # small, never empty


def test_defect_changes_the_image_inside_its_mask(default_root):
    """The mask is exact: the pixels it marks differ from their surroundings more than unmasked ones do."""
    splits = read_folder_category(default_root, "object")
    for sample in [s for s in splits.test if s.label == ANOMALOUS][::5]:
        gray = read_image(sample.image_path).astype(np.float32).mean(2)
        residual = np.abs(gray - cv2.medianBlur(gray.astype(np.uint8), 7))
        mask = read_mask(sample.mask_path).astype(bool)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        if sample.defect_type in ("scratch", "crack"):
            assert residual[mask].mean() > residual[ring].mean()


@pytest.mark.parametrize("category", ["texture", "object"])
def test_most_defects_are_visible_and_a_few_are_hard(default_root, category):
    """Visibility (`defect_visibility`) = peak of the Gaussian-blurred (sigma 2 px, about what a person resolves at
    256 px) absolute grey change between a defective image and the same image rendered without its defect. At least
    70 % of the defects change some spot by 15 grey levels or more (generator version 1: 33 % of the texture
    defects); a few stay under it (the hard ones). The written PNG is the rendered image, rounded."""
    visibility = []
    for defect in DEFECTS[category]:
        for index in range(10):
            image, mask = render_sample(0, category, f"test/{defect}", index, 256, defect)
            written = read_image(default_root / category / "test" / defect / f"{index:03d}.png").astype(np.float32)
            assert np.abs(written - np.clip(image + 0.5, 0, 255).astype(np.uint8)).max() == 0
            assert np.array_equal(read_mask(default_root / category / "ground_truth" / defect /
                                            f"{index:03d}_mask.png"), mask)
            visibility.append(defect_visibility(0, category, defect, index, 256))
    visible = np.mean(np.array(visibility) >= VISIBLE_GREY_LEVELS)
    assert 0.7 <= visible < 1.0, visible


def test_trivial_detectors_do_not_separate(default_root):
    """Global intensity and per-pixel distance to the mean normal image score at most 0.6 image AUROC (chance 0.5)."""
    for category in ("texture", "object"):
        splits = read_folder_category(default_root, category)
        train = np.stack([read_image(s.image_path).mean(2) for s in splits.train]).astype(np.float32)
        test = np.stack([read_image(s.image_path).mean(2) for s in splits.test]).astype(np.float32)
        labels = [s.label for s in splits.test]
        mean_image = train.mean(0)
        scores = {
            "mean_intensity": np.abs(test.mean((1, 2)) - train.mean()),
            "pixel_distance": np.abs(test - mean_image).mean((1, 2)),
            "max_blurred_distance": np.array([np.abs(cv2.GaussianBlur(t - mean_image, (0, 0), 2)).max()
                                              for t in test]),
        }
        for name, score in scores.items():
            assert roc_auc_score(labels, score) <= 0.6, (category, name)


def test_byte_identical_for_a_seed(tmp_path):
    generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    generate_synthetic(tmp_path / "b", seed=3, **SMALL)
    generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * (2 + 1) + 3 + 4 + 3 + 4  # images + masks, both categories
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_ensure_generates_once_and_respects_foreign_folders(default_root, tmp_path):
    probe = default_root / "texture" / "train" / "good" / "000.png"
    before = probe.stat().st_mtime_ns
    assert ensure_synthetic(default_root) == default_root and ensure_synthetic(default_root, seed=0) == default_root
    assert probe.stat().st_mtime_ns == before
    assert json.loads((default_root / MARKER).read_text())["seed"] == 0

    small = ensure_synthetic(tmp_path / "small", seed=1, image_size=64, **SMALL)
    assert read_image(small / "object" / "test" / "good" / "000.png").shape == (64, 64, 3)
    old = (small / "object" / "train" / "good" / "000.png").read_bytes()
    ensure_synthetic(small, seed=2, image_size=64, **SMALL)  # another seed: regenerated in place
    assert json.loads((small / MARKER).read_text())["seed"] == 2
    assert (small / "object" / "train" / "good" / "000.png").read_bytes() != old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".small-")]  # no staging left behind
    marker = json.loads((small / MARKER).read_text())  # a copy from an older generator version is regenerated
    (small / MARKER).write_text(json.dumps({**marker, "version": GENERATOR_VERSION - 1}))
    ensure_synthetic(small, seed=2, image_size=64, **SMALL)
    assert json.loads((small / MARKER).read_text())["version"] == GENERATOR_VERSION

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="no synthetic dataset marker"):
        ensure_synthetic(foreign)
    assert (foreign / "important.txt").read_text() == "keep me"


def test_unknown_synthetic_category(default_root):
    with pytest.raises(DatasetError, match="unknown synthetic category 'carpet'.*object, texture"):
        load_category({"dataset": "synthetic", "root": str(default_root), "category": "carpet"})
