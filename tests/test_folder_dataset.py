"""The generic MVTec-layout reader: order, mask lookup, and one clear error per broken layout."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from prn_lightning.data.sources.folder import find_categories, read_folder_category
from prn_lightning.data.sources.records import ANOMALOUS, NORMAL
from prn_lightning.data.sources.registry import dataset_categories, load_category
from prn_lightning.errors import DatasetError


def _img(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return path


def make_category(root: Path, name: str = "widget") -> Path:
    base = root / name
    for stem in ("b", "a", "c"):
        _img(base / "train" / "good" / f"{stem}.png")
    _img(base / "test" / "good" / "g1.jpg")
    _img(base / "test" / "crack" / "x1.png")
    _img(base / "ground_truth" / "crack" / "x1_mask.png", 255)
    _img(base / "test" / "hole" / "y1.JPG")
    _img(base / "test" / "hole" / "y0.bmp")
    _img(base / "ground_truth" / "hole" / "y1_mask.BMP", 255)
    _img(base / "ground_truth" / "hole" / "y0_mask.tif", 255)
    (base / "train" / "good" / "readme.txt").write_text("not an image")
    return base


def test_reads_layout_in_sorted_order(tmp_path):
    make_category(tmp_path)
    splits = read_folder_category(tmp_path, "widget")
    assert [s.image_path.name for s in splits.train] == ["a.png", "b.png", "c.png"]
    assert all(s.label == NORMAL and s.mask_path is None for s in splits.train)
    assert [(s.image_path.name, s.defect_type, s.label) for s in splits.test] == [
        ("g1.jpg", "good", NORMAL), ("x1.png", "crack", ANOMALOUS), ("y0.bmp", "hole", ANOMALOUS),
        ("y1.JPG", "hole", ANOMALOUS)]
    assert [s.mask_path.name for s in splits.test[1:]] == ["x1_mask.png", "y0_mask.tif", "y1_mask.BMP"]
    assert splits.defect_types == ["crack", "hole"] and splits.dataset == "folder" and splits.is_texture is None


def test_load_category_folder_dispatch(tmp_path):
    make_category(tmp_path)
    splits = load_category({"dataset": "folder", "root": str(tmp_path), "category": "widget"})
    assert len(splits.train) == 3 and len(splits.test) == 4
    assert find_categories(tmp_path) == ["widget"] == dataset_categories("folder", tmp_path)


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere.* does not exist.*data.root"):
        read_folder_category(tmp_path / "nowhere", "widget")


def test_missing_category_lists_valid_ones(tmp_path):
    make_category(tmp_path, "widget")
    make_category(tmp_path, "gadget")
    with pytest.raises(DatasetError, match=r"category 'bolt'.*categories under .*: gadget, widget"):
        read_folder_category(tmp_path, "bolt")


def test_empty_train_folder_is_named(tmp_path):
    base = make_category(tmp_path)
    for path in (base / "train" / "good").glob("*.png"):
        path.unlink()
    with pytest.raises(DatasetError, match=r"no training images in .*widget/train/good"):
        read_folder_category(tmp_path, "widget")


def test_defect_without_mask_names_image_and_expected_mask(tmp_path):
    base = make_category(tmp_path)
    _img(base / "test" / "crack" / "x2.png")
    with pytest.raises(DatasetError) as err:
        read_folder_category(tmp_path, "widget")
    message = str(err.value)
    assert str(base / "test" / "crack" / "x2.png") in message
    assert str(base / "ground_truth" / "crack" / "x2_mask") + ".png" in message


def test_missing_test_folder_is_named(tmp_path):
    base = make_category(tmp_path)
    for path in sorted((base / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (base / "test").rmdir()
    with pytest.raises(DatasetError, match=r"missing test folder .*widget/test"):
        read_folder_category(tmp_path, "widget")


def test_unknown_dataset_and_unset_keys(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*mvtec"):
        load_category({"dataset": "imagenet", "root": str(tmp_path), "category": "x"})
    with pytest.raises(DatasetError, match="data.category is not set"):
        load_category({"dataset": "folder", "root": str(tmp_path), "category": None})
