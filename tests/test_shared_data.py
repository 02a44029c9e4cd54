"""The real inspection data in ../shared/data reads unchanged through the MVTec-layout folder reader."""
from __future__ import annotations

from collections import Counter

import pytest

from prn_lightning.data.seen import split_seen
from prn_lightning.data.sources.records import ANOMALOUS, NORMAL
from prn_lightning.data.sources.registry import dataset_categories, load_category

pytestmark = pytest.mark.shared_data

EXPECTED = {
    "magnetic_tile": (600, 352, {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}),
    "kolektor": (245, 103, {"defect": 52}),
}


@pytest.mark.parametrize("category", sorted(EXPECTED))
def test_counts_and_masks(shared_data, category):
    splits = load_category({"dataset": "folder", "root": str(shared_data), "category": category})
    train, good, defects = EXPECTED[category]
    assert len(splits.train) == train
    assert sum(s.label == NORMAL for s in splits.test) == good
    assert Counter(s.defect_type for s in splits.test if s.label == ANOMALOUS) == defects
    anomalies = [s for s in splits.test if s.label == ANOMALOUS]
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in anomalies)
    assert all(s.mask_path.name == f"{s.image_path.stem}_mask.png" for s in anomalies)
    assert {"magnetic_tile", "kolektor"} <= set(dataset_categories("folder", shared_data))


def test_seen_draw_on_magnetic_tile(shared_data):
    splits = load_category({"dataset": "folder", "root": str(shared_data), "category": "magnetic_tile"})
    seen, test = split_seen(splits, 10, 42)
    assert Counter(s.defect_type for s in seen) == dict.fromkeys(splits.defect_types, 2)
    assert not {s.image_path for s in seen} & {s.image_path for s in test}
    assert len(test) == len(splits.test) - 10


@pytest.mark.parametrize("category, num_test", [("magnetic_tile", 352 + 392), ("kolektor", 103 + 52)])
def test_datamodule_with_ten_seen_anomalies(shared_data, tmp_path, category, num_test):
    """The real data through the datamodule, as `prn train data=folder` uses it."""
    from prn_lightning.config import load_config
    from prn_lightning.data.datamodule import PRNDataModule
    from prn_lightning.data.seen import read_seen_list

    cfg = load_config(["data=folder", f"data.root={shared_data}", f"data.category={category}",
                       "data.image_size=64", "data.num_workers=0", "data.batch_size=4",
                       f"data.texture_dir={shared_data / 'textures' / 'brodatz'}"])
    datamodule = PRNDataModule(cfg.data, seed=0, run_dir=tmp_path)
    datamodule.setup("fit")
    seen = {s.image_path for s in datamodule.seen_anomalies}
    assert len(seen) == 10
    assert len(datamodule.test_samples) == num_test - 10
    assert not seen & {s.image_path for s in datamodule.test_samples}
    for sample in datamodule.test_samples:
        assert (sample.label == 0 and sample.mask_path is None) or (sample.label == 1 and sample.mask_path.is_file())
    assert {s.image_path for s in read_seen_list(tmp_path / "seen_anomalies.txt")} == seen
    train_batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    assert train_batch["image"].shape == (4, 3, 64, 64)
    test_batch = next(iter(datamodule.test_dataloader()))
    assert set(test_batch["mask"].unique().tolist()) <= {0.0, 1.0}
