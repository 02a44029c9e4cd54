"""Bad files cost seconds, not a training run: every image and mask of every split is decoded before the first
training step (one error listing every bad file); empty masks, tiny images and resized masks are reported once;
an anomaly with an empty mask is never drawn as a seen anomaly but stays in the test set."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from prn_lightning.cli import main as prn
from prn_lightning.data.checks import DataWarning, check_splits
from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.data.seen import split_seen
from prn_lightning.data.sources.folder import read_folder_category
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    """texture category, 64 px: 8 train/good, 3 test/good, 2 per defect type (4 types), all decodable."""
    root = tmp_path_factory.mktemp("clean")
    generate_synthetic(root, image_size=SIZE, num_train=8, num_test_good=3, num_per_defect=2, categories=("texture",))
    return root


@pytest.fixture
def root(clean_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(clean_root, copy)
    return copy


def data_cfg(root: Path, **overrides):
    cfg = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({"dataset": "folder", "root": str(root), "category": "texture", "image_size": SIZE,
                    "num_seen_anomalies": 2, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0})
    cfg.merge_with(overrides)
    return cfg


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def anomalies(root: Path) -> list[Path]:
    return sorted(p for p in (root / "texture" / "test").glob("*/*.png") if p.parent.name != "good")


def mask_of(image: Path) -> Path:
    return image.parents[2] / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"


def test_every_bad_file_of_every_split_is_listed_at_once(root: Path):
    category = root / "texture"
    empty = category / "train" / "good" / "000.png"
    empty.write_bytes(b"")
    cut_png = category / "test" / "good" / "001.png"
    truncate(cut_png)
    cut_jpg = category / "test" / "good" / "jpeg.jpg"  # a JPEG cut short: PIL's header still reads it
    ok, encoded = cv2.imencode(".jpg", (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    cut_jpg.write_bytes(encoded.tobytes()[: len(encoded) // 2])
    cut_mask = mask_of(anomalies(root)[0])
    truncate(cut_mask, 0.9)
    report = check_splits(read_folder_category(root, "texture"), SIZE)
    assert sorted(p for p, _ in report.unreadable) == sorted([empty, cut_png, cut_jpg, cut_mask])
    with pytest.raises(DatasetError) as err:
        report.raise_for_unreadable()
    message = str(err.value)
    assert "\n" not in message and message.startswith("4 of ")
    assert all(str(p) in message for p in (empty, cut_png, cut_jpg, cut_mask))
    assert "0 bytes" in message


def test_a_corrupt_test_image_stops_prn_train_before_any_training_step(root: Path, tmp_path: Path, capsys):
    """Before: the run trained, then failed when the test pass reached the file."""
    bad = root / "texture" / "test" / "good" / "002.png"
    truncate(bad)
    runs = tmp_path / "runs"
    code = prn(["train", "data=folder", f"data.root={root}", "data.category=texture", f"data.image_size={SIZE}",
                "data.num_seen_anomalies=2", "data.num_workers=0", "data.batch_size=4", "trainer.max_epochs=1",
                "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", "logger=none",
                "model.backbone.weights=none", "model.msa_blocks=1", f"runs_root={runs}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(bad) in err and "cannot be read" in err
    assert not list(runs.rglob("*.ckpt"))  # no training step ran


def test_empty_masks_are_never_seen_and_stay_in_the_test_set(root: Path):
    defects = anomalies(root)
    blank = defects[3]
    cv2.imwrite(str(mask_of(blank)), np.zeros((SIZE, SIZE), np.uint8))
    speck = defects[5]  # one pixel: gone at 32 px, the training resolution below
    speck_mask = np.zeros((SIZE, SIZE), np.uint8)
    speck_mask[17, 17] = 255
    cv2.imwrite(str(mask_of(speck)), speck_mask)
    usable = len(defects) - 2
    with pytest.warns(DataWarning, match=r"2 anomalous image\(s\) have an empty mask") as caught:
        dm = PRNDataModule(data_cfg(root, image_size=32, num_seen_anomalies=usable), seed=0)
        dm.setup("fit")
    assert str(mask_of(blank)) in str(caught[0].message) and str(mask_of(speck)) in str(caught[0].message)
    seen = {s.image_path for s in dm.seen_anomalies}
    assert len(seen) == usable and blank not in seen and speck not in seen
    assert {blank, speck} <= {s.image_path for s in dm.test_samples}  # still scored as anomalous images
    with pytest.raises(DatasetError, match=rf"only {usable} anomalous images with a non-empty mask \(2 more"):
        PRNDataModule(data_cfg(root, image_size=32, num_seen_anomalies=usable + 1), seed=0).setup("fit")


def test_tiny_images_and_resized_masks_warn_once_with_counts_and_paths(root: Path):
    tiny = root / "texture" / "train" / "good" / "003.png"
    cv2.imwrite(str(tiny), np.full((1, 1, 3), 128, np.uint8))
    resized = mask_of(anomalies(root)[1])
    mask = cv2.imread(str(resized), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(resized), cv2.resize(mask, (SIZE * 2, SIZE * 2), interpolation=cv2.INTER_NEAREST))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PRNDataModule(data_cfg(root), seed=0).setup("fit")
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 2, messages
    assert messages[0].startswith("1 image(s) are smaller than 32 px") and f"{tiny} (1x1)" in messages[0]
    assert messages[1].startswith("1 mask(s) differ in size")
    assert f"{resized} (mask 128x128, image 64x64)" in messages[1]


def test_magnetic_tile_empty_masks_are_found_and_never_drawn(shared_data: Path):
    splits = read_folder_category(shared_data, "magnetic_tile")
    report = check_splits(splits, 256)
    assert report.unreadable == []
    empty = {s.image_path.name for s in report.empty_masks}
    assert len(empty) >= 5 and all(s.defect_type == "uneven" for s in report.empty_masks), empty
    for seed in range(5):
        seen, test = split_seen(splits, 10, seed, unusable=report.empty_masks)
        assert not {s.image_path.name for s in seen} & empty
        assert {s.image_path.name for s in report.empty_masks} <= {s.image_path.name for s in test}
