"""Batched Perlin masks: binary, never empty, seeded, on the input device, scale and rotation behave."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from prn_lightning.synthesis import perlin
from prn_lightning.synthesis.perlin import perlin_masks, perlin_noise

SETTINGS = dict(min_scale=0, max_scale=6, threshold=0.5, rotation_deg=90.0)


def masks(batch: int, seed: int, size=(64, 64), **overrides) -> torch.Tensor:
    kwargs = {**SETTINGS, **overrides}
    return perlin_masks(batch, *size, generator=torch.Generator().manual_seed(seed), device="cpu", **kwargs)


def test_masks_are_binary_nonempty_float_of_the_requested_shape():
    out = masks(16, seed=0, size=(48, 80))
    assert out.shape == (16, 1, 48, 80) and out.dtype == torch.float32
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert (out.flatten(1).amax(dim=1) == 1).all()
    assert 0.0 < out.mean() < 0.5


def test_same_seed_same_masks_other_seed_other_masks():
    assert torch.equal(masks(6, seed=3), masks(6, seed=3))
    assert not torch.equal(masks(6, seed=3), masks(6, seed=4))


def test_noise_range_and_chunking_does_not_change_values(monkeypatch):
    def draw():
        return perlin_noise(5, 40, 56, min_scale=0, max_scale=5, rotation_deg=90.0,
                            generator=torch.Generator().manual_seed(1), device="cpu")
    chunked = draw()
    monkeypatch.setattr(perlin, "CPU_CHUNK_PIXELS", 10**9)  # one chunk for the whole batch
    assert torch.equal(chunked, draw())
    assert chunked.abs().max() <= 1.0 and chunked.std() > 0.1


def test_empty_masks_are_redrawn():
    # scale 0 (a single lattice cell) with a high threshold gives empty first draws; `masks` with the same seed
    # starts from exactly these draws, so it must have re-drawn some
    first = perlin_noise(64, 32, 32, min_scale=0, max_scale=1, rotation_deg=0.0,
                         generator=torch.Generator().manual_seed(0), device="cpu")
    assert ((first > 0.6).flatten(1).amax(dim=1) == 0).any(), "the test needs some empty first draws"
    out = masks(64, seed=0, size=(32, 32), min_scale=0, max_scale=1, threshold=0.6, rotation_deg=0.0)
    assert (out.flatten(1).amax(dim=1) == 1).all()


def test_threshold_range_draws_one_threshold_per_mask_before_the_noise():
    # each mask is exactly its noise above its own threshold, drawn uniformly in [min_threshold, threshold] first;
    # a lower threshold covers more of the image (why the range exists: defects larger than DRAEM's masks)
    seed, batch = 5, 32
    out = masks(batch, seed=seed, min_scale=1, max_scale=5, min_threshold=0.1)
    gen = torch.Generator().manual_seed(seed)
    cut = 0.1 + torch.rand(batch, generator=gen) * 0.4
    noise = perlin_noise(batch, 64, 64, min_scale=1, max_scale=5, rotation_deg=90.0, generator=gen, device="cpu")
    assert torch.equal(out[:, 0], (noise > cut.view(batch, 1, 1)).float())
    coverage = out.flatten(1).mean(dim=1)
    fixed = masks(batch, seed=seed, min_scale=1, max_scale=5).flatten(1).mean(dim=1)
    assert coverage.mean() > 2 * fixed.mean()
    assert torch.corrcoef(torch.stack([coverage, -cut]))[0, 1] > 0.5  # the lower its threshold, the larger a mask


def test_no_range_draws_nothing_extra():
    # min_threshold null or equal to threshold: DRAEM's fixed threshold, the random stream untouched
    assert torch.equal(masks(8, seed=1, min_threshold=None), masks(8, seed=1, min_threshold=0.5))
    assert torch.equal(masks(8, seed=1), masks(8, seed=1, min_threshold=0.5))


def test_finer_scales_give_more_regions():
    def mean_regions(scale: int) -> float:
        out = masks(8, seed=2, size=(128, 128), min_scale=scale, max_scale=scale + 1, rotation_deg=0.0)
        return float(np.mean([cv2.connectedComponents(m[0].numpy().astype(np.uint8))[0] - 1 for m in out]))

    assert mean_regions(5) > 3 * mean_regions(1)


def test_noise_vanishes_on_lattice_points_only_without_rotation():
    # Perlin noise is 0 at lattice points; with 8 cells over 64 px and no rotation they are pixels (8k, 8k)
    def lattice_values(rotation: float) -> torch.Tensor:
        noise = perlin_noise(4, 64, 64, min_scale=3, max_scale=4, rotation_deg=rotation,
                             generator=torch.Generator().manual_seed(0), device="cpu")
        return noise[:, ::8, ::8]

    assert lattice_values(0.0).abs().max() < 1e-5
    assert lattice_values(90.0).abs().max() > 0.1


def test_device_follows_the_request():
    assert masks(2, seed=0, size=(16, 16)).device.type == "cpu"
    if torch.cuda.is_available():
        gen = torch.Generator(device="cuda").manual_seed(0)
        assert perlin_masks(2, 16, 16, generator=gen, device="cuda", **SETTINGS).device.type == "cuda"


def test_bad_settings_name_the_config_key():
    with pytest.raises(ValueError, match="data.perlin.threshold"):
        masks(1, seed=0, threshold=1.0)
    with pytest.raises(ValueError, match="min_scale"):
        masks(1, seed=0, min_scale=3, max_scale=3)
    with pytest.raises(ValueError, match=r"data.perlin.min_threshold=0.6 .* min_threshold <= threshold"):
        masks(1, seed=0, min_threshold=0.6)
