"""MVTec AD, BTAD, DAGM and KolektorSDD2 adapters on tiny fake copies of their native layouts."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from prn_lightning.data.sources.records import ANOMALOUS, NORMAL
from prn_lightning.data.sources.registry import DATASETS, dataset_categories, load_category
from prn_lightning.errors import DatasetError


def _img(path: Path, value: int = 100, shape=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


def _cfg(dataset: str, root: Path, category) -> dict:
    return {"dataset": dataset, "root": str(root), "category": category}


# ------------------------------------------------------------------------------------------------ MVTec AD
def _mvtec(root: Path, category: str) -> None:
    base = root / category
    _img(base / "train" / "good" / "000.png")
    _img(base / "test" / "good" / "000.png")
    _img(base / "test" / "cut" / "000.png")
    _img(base / "ground_truth" / "cut" / "000_mask.png", 255)


def test_mvtec_texture_flag_and_layout(tmp_path):
    _mvtec(tmp_path, "carpet")
    _mvtec(tmp_path, "bottle")
    carpet = load_category(_cfg("mvtec", tmp_path, "carpet"))
    assert carpet.is_texture is True and carpet.dataset == "mvtec" and carpet.defect_types == ["cut"]
    assert load_category(_cfg("mvtec", tmp_path, "bottle")).is_texture is False
    assert len(DATASETS["mvtec"]) == 15


def test_mvtec_missing_root_and_category_point_to_download(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*prn download mvtec"):
        load_category(_cfg("mvtec", tmp_path / "absent", "carpet"))
    _mvtec(tmp_path, "bottle")
    with pytest.raises(DatasetError, match=r"category 'carpet'.*categories under .*: bottle.*prn download mvtec"):
        load_category(_cfg("mvtec", tmp_path, "carpet"))
    with pytest.raises(DatasetError, match=r"unknown MVTec AD category 'carpets'.*bottle, cable"):
        load_category(_cfg("mvtec", tmp_path, "carpets"))


# ------------------------------------------------------------------------------------------------ BTAD
def test_btad_ok_ko_layout_with_same_stem_masks(tmp_path):
    base = tmp_path / "01"
    _img(base / "train" / "ok" / "0000.bmp")
    _img(base / "train" / "ok" / "0001.bmp")
    _img(base / "test" / "ok" / "0000.bmp")
    _img(base / "test" / "ko" / "0005.bmp")
    _img(base / "ground_truth" / "ko" / "0005.png", 255)
    for category in ("01", 1):  # YAML and the CLI read `01` as the integer 1
        splits = load_category(_cfg("btad", tmp_path, category))
        assert splits.category == "01" and len(splits.train) == 2
        assert [(s.label, s.defect_type) for s in splits.test] == [(NORMAL, "good"), (ANOMALOUS, "ko")]
        assert splits.test[1].mask_path.name == "0005.png"
    _img(base / "test" / "ko" / "0006.bmp")
    with pytest.raises(DatasetError, match=r"0006.bmp has no mask: expected .*ground_truth/ko/0006.png"):
        load_category(_cfg("btad", tmp_path, "01"))
    with pytest.raises(DatasetError, match="unknown BTAD category '04'"):
        load_category(_cfg("btad", tmp_path, "04"))


# ------------------------------------------------------------------------------------------------ DAGM
def _dagm_split(split_dir: Path, rows: list[tuple[str, int]]) -> None:
    lines = [str(len(rows))]
    for index, (stem, flag) in enumerate(rows, start=1):
        _img(split_dir / f"{stem}.PNG", shape=(16, 16))
        label = f"{stem}_label.PNG" if flag else "0"
        if flag:
            _img(split_dir / "Label" / label, 255, shape=(16, 16))
        lines.append(f"{index}\t{flag}\t{stem}.PNG\t0\t{label}")
    (split_dir / "Label").mkdir(parents=True, exist_ok=True)
    (split_dir / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")


def test_dagm_labels_file(tmp_path):
    _dagm_split(tmp_path / "Class3" / "Train", [("0002", 0), ("0001", 0), ("0003", 1)])
    _dagm_split(tmp_path / "Class3" / "Test", [("0010", 0), ("0011", 1)])
    splits = load_category(_cfg("dagm", tmp_path, "Class3"))
    assert [s.image_path.name for s in splits.train] == ["0001.PNG", "0002.PNG"]  # defective Train image unused
    assert [(s.image_path.name, s.label, s.defect_type) for s in splits.test] == [
        ("0010.PNG", NORMAL, "good"), ("0011.PNG", ANOMALOUS, "defect")]
    assert splits.test[1].mask_path.name == "0011_label.PNG" and splits.is_texture is True


def test_dagm_layout_errors(tmp_path):
    _dagm_split(tmp_path / "Class1" / "Train", [("0001", 0)])
    _dagm_split(tmp_path / "Class1" / "Test", [("0002", 1)])
    (tmp_path / "Class1" / "Test" / "Label" / "0002_label.PNG").unlink()
    with pytest.raises(DatasetError, match=r"0002.PNG has no label: expected .*Label/0002_label.PNG"):
        load_category(_cfg("dagm", tmp_path, "Class1"))
    (tmp_path / "Class1" / "Test" / "Label" / "Labels.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing .*Class1/Test/Label/Labels.txt"):
        load_category(_cfg("dagm", tmp_path, "Class1"))
    with pytest.raises(DatasetError, match=r"category 'Class2'.*categories under .*: Class1.*prn download dagm"):
        load_category(_cfg("dagm", tmp_path, "Class2"))


# ------------------------------------------------------------------------------------------------ KSDD2
def _ksdd2_pair(split_dir: Path, stem: str, defective: bool) -> None:
    _img(split_dir / f"{stem}.png", shape=(20, 8))
    mask = np.zeros((20, 8), np.uint8)
    if defective:
        mask[5:8, 2:4] = 255
    split_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(split_dir / f"{stem}_GT.png"), mask)


def test_ksdd2_defective_iff_mask_non_empty(tmp_path):
    for stem, defective in (("10000", False), ("10001", True), ("10002", False)):
        _ksdd2_pair(tmp_path / "train", stem, defective)
    for stem, defective in (("20000", False), ("20001", True)):
        _ksdd2_pair(tmp_path / "test", stem, defective)
    splits = load_category(_cfg("ksdd2", tmp_path, "ksdd2"))
    assert [s.image_path.name for s in splits.train] == ["10000.png", "10002.png"]
    assert [(s.label, s.defect_type, s.mask_path and s.mask_path.name) for s in splits.test] == [
        (NORMAL, "good", None), (ANOMALOUS, "defect", "20001_GT.png")]
    _img(tmp_path / "test" / "20001 (copy).png")
    with pytest.warns(UserWarning, match=r"skipping 1 file.*20001 \(copy\).png"):
        assert len(load_category(_cfg("ksdd2", tmp_path, "ksdd2")).test) == 2
    (tmp_path / "test" / "20001 (copy).png").unlink()
    (tmp_path / "test" / "20000_GT.png").unlink()
    with pytest.raises(DatasetError, match=r"20000.png has no mask: expected .*20000_GT.png"):
        load_category(_cfg("ksdd2", tmp_path, "ksdd2"))


def test_ksdd2_missing_root_points_to_download(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*train/ and test/.*prn download ksdd2"):
        load_category(_cfg("ksdd2", tmp_path / "absent", "ksdd2"))


def test_dataset_categories():
    assert dataset_categories("btad") == ["01", "02", "03"]
    assert dataset_categories("dagm")[-1] == "Class10" and dataset_categories("ksdd2") == ["ksdd2"]
    assert dataset_categories("synthetic") == ["object", "texture"] and DATASETS["folder"] is None
    with pytest.raises(DatasetError, match="unknown dataset 'visa'"):
        dataset_categories("visa")
