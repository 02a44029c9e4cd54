"""The real inspection data in ../shared/data reads unchanged through the MVTec-layout folder reader."""
from __future__ import annotations

from collections import Counter

import pytest

from prn_lightning.data.records import ANOMALOUS, NORMAL
from prn_lightning.data.registry import dataset_categories, load_category
from prn_lightning.data.seen import split_seen

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
