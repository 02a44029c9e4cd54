"""The test report keeps only the maps a panel may need, whichever process or batch scored an image; metric names."""
from __future__ import annotations

import pytest
import torch

from prn_lightning.loggers.run_artifacts import panel_candidates, select_panel_indices
from prn_lightning.metrics.names import METRICS, key, stage_key


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("count", [1, 3, 12])
def test_panels_chosen_from_all_images_are_among_every_parts_candidates(seed, count):
    generator = torch.Generator().manual_seed(seed)
    n = 60
    scores = torch.round(torch.rand(n, generator=generator) * 8) / 8  # many ties
    labels = (torch.rand(n, generator=generator) > 0.7).long()
    chosen = {position for position, _ in select_panel_indices(scores, labels, count)}
    assert len(chosen) == min(count, n)
    # split the images (kept in index order) over 3 "ranks", and within a rank over batches as they arrive
    owner = torch.randint(0, 3, (n,), generator=generator)
    kept: set[int] = set()
    for rank in range(3):
        mine = torch.nonzero(owner == rank).flatten()
        local: set[int] = set()
        for end in range(5, len(mine) + 5, 5):  # after each batch of 5, the candidates among what arrived so far
            seen = mine[:end]
            local = {int(seen[p]) for p in panel_candidates(scores[seen], labels[seen], count)}
        kept |= local
    assert chosen <= kept
    assert len(kept) <= 3 * 3 * count  # bounded by the panels asked for, not by the test set


def test_ties_are_broken_by_position_not_by_sort_internals():
    scores = torch.zeros(10)
    labels = torch.tensor([1, 0] * 5)
    chosen = select_panel_indices(scores, labels, 3)
    assert chosen == [(0, "worst-false-negative"), (1, "worst-false-positive"), (8, "detection")]


def test_metric_names_and_old_history_columns():
    assert [m.letter for m in METRICS] == ["I", "P", "O", "A"]
    assert key("val", "pixel_ap") == "val/pixel_ap"
    assert stage_key("val_pixel_ap") == "val/pixel_ap" and stage_key("train_loss") == "train/loss"
    assert stage_key("val/pixel_ap") == "val/pixel_ap" and stage_key("epoch_time_s") == "epoch_time_s"
    with pytest.raises(ValueError, match="stage"):
        key("validation", "loss")
