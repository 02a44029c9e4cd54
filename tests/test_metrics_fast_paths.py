"""The metrics' fast paths give bit-identical results: the two-thread sort of large score sets equals one sort."""
from __future__ import annotations

import numpy as np
import torch

from prn_lightning.metrics import AnomalyMetrics, ranking


def test_two_thread_sort_equals_one_sort_with_ties_and_infinities(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(50_000).astype(np.float32)
    scores[::5] = 0.5  # many ties, around the sampled median
    scores[:3] = [np.inf, -np.inf, -0.0]
    labels = rng.random(scores.size) < 0.1
    monkeypatch.setattr(ranking, "PARALLEL_SORT_MIN", 1000)
    assert np.array_equal(ranking._sorted_negatives(scores, labels), np.sort(scores[~labels]))


def test_all_metrics_are_identical_with_and_without_the_two_thread_sort(monkeypatch) -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 40, 40, generator=generator) > 0.9
    masks[0] = False
    maps = torch.round((torch.rand(masks.shape, generator=generator) + 0.3 * masks) * 100) / 100
    labels = masks.flatten(1).any(1)
    defect_ids = torch.where(labels, torch.arange(6) % 2, -1)
    results = []
    for threshold in (10**9, 100):  # one sort; two threads (the 9,600 pixels are then "large")
        monkeypatch.setattr(ranking, "PARALLEL_SORT_MIN", threshold)
        metrics = AnomalyMetrics(["a", "b"])
        metrics.update(maps, masks, maps.flatten(1).amax(1), labels, defect_ids)
        curves = {k: {n: v.tolist() for n, v in c.items()} for k, c in metrics.curves().items()}
        results.append((metrics.compute(), metrics.per_defect(), curves))
    assert results[0] == results[1]
