"""The seen-anomaly draw: even over defect types, reproducible, removed from the test set, recorded."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from prn_lightning.data.seen import (
    read_seen_list,
    select_held_out_anomalies,
    select_seen_anomalies,
    split_held_out,
    split_seen,
    write_seen_list,
)
from prn_lightning.data.sources.records import ANOMALOUS, NORMAL, CategorySplits, Sample
from prn_lightning.errors import DatasetError


def _splits(per_type: dict[str, int], normals: int = 5) -> CategorySplits:
    test = [Sample(Path(f"good/{i}.png"), None, NORMAL) for i in range(normals)]
    test += [Sample(Path(f"{d}/{i}.png"), Path(f"gt/{d}/{i}_mask.png"), ANOMALOUS, d)
             for d, n in per_type.items() for i in range(n)]
    return CategorySplits("folder", "x", Path("."), train=[], test=test)


def test_spread_evenly_over_defect_types():
    splits = _splits({"a": 10, "b": 10, "c": 10, "d": 10, "e": 10})
    assert Counter(s.defect_type for s in select_seen_anomalies(splits.test, 10, 0)) == dict.fromkeys("abcde", 2)
    counts = Counter(s.defect_type for s in select_seen_anomalies(splits.test, 7, 0))
    assert sum(counts.values()) == 7 and max(counts.values()) - min(counts.values()) <= 1


def test_small_types_run_out_and_others_fill_in():
    splits = _splits({"rare": 1, "common": 20})
    seen = select_seen_anomalies(splits.test, 6, 3)
    assert Counter(s.defect_type for s in seen) == {"rare": 1, "common": 5}


def test_deterministic_by_seed_and_independent_of_input_order():
    splits = _splits({"a": 30, "b": 30})
    first = select_seen_anomalies(splits.test, 6, 42)
    assert first == select_seen_anomalies(list(reversed(splits.test)), 6, 42)
    assert first != select_seen_anomalies(splits.test, 6, 43)


def test_split_removes_seen_from_test_and_keeps_the_rest():
    splits = _splits({"a": 4, "b": 4})
    seen, test = split_seen(splits, 4, 1)
    assert len(seen) == 4 and not set(seen) & set(test)
    assert sorted(map(str, (s.image_path for s in seen + test))) == sorted(str(s.image_path) for s in splits.test)
    assert all(s.label == ANOMALOUS for s in seen)


def test_zero_and_too_many():
    splits = _splits({"a": 2, "b": 1})
    seen, test = split_seen(splits, 0, 0)
    assert seen == [] and test == splits.test
    with pytest.raises(DatasetError, match=r"num_seen_anomalies=4 .* only 3 anomalous"):
        split_seen(splits, 4, 0)
    with pytest.raises(DatasetError, match="num_seen_anomalies"):
        split_seen(splits, -1, 0)


def test_validation_anomalies_continue_the_draw_without_changing_the_seen_ones():
    splits = _splits({"a": 5, "b": 5, "c": 5})
    for seed in (0, 42):
        seen, val, test = split_held_out(splits, 4, 5, seed)
        assert seen == select_seen_anomalies(splits.test, 4, seed)  # asking for validation anomalies moves no seen one
        assert seen + val == select_seen_anomalies(splits.test, 9, seed)  # one round-robin sequence
        assert len(val) == 5 and not set(val) & set(seen) and not set(val) & set(test)
        assert sorted(str(s.image_path) for s in seen + val + test) == sorted(str(s.image_path) for s in splits.test)
        assert Counter(s.defect_type for s in seen + val) == {"a": 3, "b": 3, "c": 3}
    assert split_held_out(splits, 4, 0, 1) == (*split_seen(splits, 4, 1)[:1], [], split_seen(splits, 4, 1)[1])


def test_validation_anomalies_skip_empty_masks_and_name_both_keys_when_too_many():
    splits = _splits({"a": 2, "b": 2})
    empty = [s for s in splits.test if s.label == ANOMALOUS][:1]
    seen, val = select_held_out_anomalies(splits.test, 1, 2, 0, unusable=empty)
    assert not set(seen + val) & set(empty)
    with pytest.raises(DatasetError, match=r"num_seen_anomalies=2 \+ data.num_val_anomalies=2 .* only 3 anomalous "
                                           r".*1 more have an empty mask.*sum is at most 3"):
        select_held_out_anomalies(splits.test, 2, 2, 0, unusable=empty)
    with pytest.raises(DatasetError, match="num_val_anomalies must be >= 0"):
        select_held_out_anomalies(splits.test, 1, -1, 0)


def test_write_and_read_seen_list(tmp_path):
    seen = select_seen_anomalies(_splits({"a": 3, "b": 3}).test, 4, 0)
    path = write_seen_list(tmp_path / "run" / "seen_anomalies.txt", seen)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and lines[1].split("\t")[:2] == [str(seen[0].image_path), seen[0].defect_type]
    assert read_seen_list(path) == seen
