"""Simulated and extended anomaly formulas, defect placement, seeded augmentation, anomaly sources."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from prn_lightning.config_checks import SOURCE_AUGMENTATION_OPS
from prn_lightning.errors import ConfigError
from prn_lightning.synthesis.augment import SOURCE_OPS, SourceAugmentation, augment_defect, defect_augmentation
from prn_lightning.synthesis.extended import extend_anomalies, place_defect
from prn_lightning.synthesis.perlin import perlin_masks
from prn_lightning.synthesis.simulated import sample_beta, simulate_anomalies
from prn_lightning.synthesis.textures import TextureSource, resolve_texture_dir


def known_arrays():
    """2x2 images, one masked pixel, beta 0.25: every output pixel can be written down by hand."""
    normal = torch.tensor([[0.2, 0.4], [0.6, 0.8]]).expand(1, 3, 2, 2).clone()
    source = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).expand(1, 3, 2, 2).clone()
    mask = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    beta = torch.full((1, 1, 1, 1), 0.25)
    return normal, source, mask, beta


def test_simulated_formula_pixel_exact():
    normal, source, mask, beta = known_arrays()
    out = simulate_anomalies(normal, source, mask, beta)
    # inside: (1 - 0.25) * 0.0 + 0.25 * 0.4 = 0.1; outside: the normal image
    expected = torch.tensor([[0.2, 0.1], [0.6, 0.8]]).expand(1, 3, 2, 2)
    assert torch.allclose(out, expected, atol=1e-7, rtol=0)


def test_extended_formula_pixel_exact_and_ignores_content_outside_mask():
    normal, content, mask, beta = known_arrays()
    out = extend_anomalies(normal, content, mask, beta)
    expected = torch.tensor([[0.2, 0.1], [0.6, 0.8]]).expand(1, 3, 2, 2)
    assert torch.allclose(out, expected, atol=1e-7, rtol=0)
    content[..., 0, 1] = 0.8  # inside: 0.75 * 0.8 + 0.25 * 0.4 = 0.7
    assert torch.allclose(extend_anomalies(normal, content, mask, beta)[0, :, 0, 1], torch.full((3,), 0.7))


def test_blend_changes_exactly_the_mask_region_and_beta_one_keeps_the_image():
    gen = torch.Generator().manual_seed(0)
    normal = torch.rand(4, 3, 32, 32, generator=gen)
    source = torch.rand(4, 3, 32, 32, generator=gen)
    mask = perlin_masks(4, 32, 32, min_scale=0, max_scale=5, threshold=0.5, rotation_deg=90, generator=gen,
                        device="cpu")
    beta = sample_beta(4, (0.0, 0.8), generator=gen, device="cpu")
    out = simulate_anomalies(normal, source, mask, beta)
    changed = (out != normal).any(dim=1, keepdim=True)
    assert torch.equal(changed, mask.bool())
    assert torch.equal(simulate_anomalies(normal, source, mask, torch.ones(4, 1, 1, 1)), normal)


def test_beta_range_and_determinism():
    beta = sample_beta(1000, (0.2, 0.6), generator=torch.Generator().manual_seed(1), device="cpu")
    assert beta.shape == (1000, 1, 1, 1) and beta.min() >= 0.2 and beta.max() < 0.6
    again = sample_beta(1000, (0.2, 0.6), generator=torch.Generator().manual_seed(1), device="cpu")
    assert torch.equal(beta, again)
    with pytest.raises(ValueError, match="data.beta"):
        sample_beta(1, (0.5, 0.2), generator=torch.Generator(), device="cpu")


def test_formulas_keep_the_input_device():
    normal, source, mask, beta = known_arrays()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        args = [t.to(device) for t in (normal, source, mask, beta)]
        assert simulate_anomalies(*args).device.type == device
        assert extend_anomalies(*args).device.type == device


def defect(size=32):
    image = np.zeros((size, size, 3), np.uint8)
    image[2:8, 3:12] = (200, 100, 50)
    mask = np.zeros((size, size), np.uint8)
    mask[2:8, 3:12] = 1
    mask[2, 3] = 0  # not a full box: the shape must travel with the content
    return image, mask


def test_place_defect_lands_on_foreground_inside_the_image():
    image, mask = defect()
    foreground = np.zeros((32, 32), bool)
    foreground[20:30, 18:30] = True
    for seed in range(20):
        content, placed = place_defect(image, mask, foreground, np.random.default_rng(seed))
        rows, cols = np.nonzero(placed)
        assert placed.sum() == mask.sum() and placed.dtype == mask.dtype
        centre = ((rows.min() + rows.max() + 1) // 2, (cols.min() + cols.max() + 1) // 2)
        assert foreground[centre]
        assert (content[placed == 1] == (200, 100, 50)).all() and (content[placed == 0] == 0).all()


def test_place_defect_clamps_a_box_that_cannot_be_centred_on_the_foreground():
    image, mask = defect()
    foreground = np.zeros((32, 32), bool)
    foreground[0, 31] = True  # only a corner pixel: the box is pushed into the image
    content, placed = place_defect(image, mask, foreground, np.random.default_rng(0))
    assert placed.sum() == mask.sum()
    assert placed[0].any() and placed[:, 31].any()


def test_place_defect_with_empty_mask_places_nothing():
    image, _ = defect()
    content, placed = place_defect(image, np.zeros((32, 32), np.uint8), np.ones((32, 32), bool),
                                   np.random.default_rng(0))
    assert not placed.any() and not content.any()


def square_defect():
    """A 64 x 64 noise image with a bright 20 x 20 square and its mask."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image[20:40, 10:30] = 255
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    return image, mask


def test_geometric_augmentation_is_seeded_keeps_masks_binary_and_aligned():
    image, mask = square_defect()
    pipeline = defect_augmentation("geometric")
    a_img, a_mask = augment_defect(pipeline, image, mask, seed=7)
    b_img, b_mask = augment_defect(pipeline, image, mask, seed=7)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert set(np.unique(a_mask)) <= {0, 1} and a_mask.dtype == np.uint8
    quadrants = set()
    for seed in range(40):
        out_img, out_mask = augment_defect(pipeline, image, mask, seed=seed)
        gray = cv2.cvtColor(out_img, cv2.COLOR_RGB2GRAY)
        assert gray[out_mask == 1].mean() > gray[out_mask == 0].mean() + 30  # the mask follows the bright square
        rows, cols = np.nonzero(out_mask)
        quadrants.add((rows.mean() < 32, cols.mean() < 32))
    assert len(quadrants) == 4  # flips are independent of each other (not all seeded alike)


def test_photometric_augmentation_keeps_a_whole_seen_image_registered():
    """The default for whole seen images: the mask is untouched, the image changes only in colour (every pixel keeps
    its place, so a bright square stays exactly where the mask says), and `none` returns the input."""
    image, mask = square_defect()
    pipeline = defect_augmentation("photometric")
    changed = 0
    for seed in range(20):
        out_img, out_mask = augment_defect(pipeline, image, mask, seed=seed)
        assert np.array_equal(out_mask, mask) and out_img.shape == image.shape and out_img.dtype == np.uint8
        gray = cv2.cvtColor(out_img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        original = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        assert np.corrcoef(gray.ravel(), original.ravel())[0, 1] > 0.9  # same pixels in the same places
        changed += not np.array_equal(out_img, image)
    assert changed >= 10  # the colour does change
    assert defect_augmentation("none") is None
    out_img, out_mask = augment_defect(None, image, mask, seed=0)
    assert out_img is image and out_mask is mask
    with pytest.raises(ConfigError, match="data.seen_augmentation=flip.*photometric, geometric, none"):
        defect_augmentation("flip")


def test_source_augmentation_draws_ops_without_replacement_seeded():
    image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    augmentation = SourceAugmentation(per_source=3)
    assert augmentation.ops == list(SOURCE_OPS) == list(SOURCE_AUGMENTATION_OPS) and len(SOURCE_OPS) == 10
    outputs = [augmentation(image, np.random.default_rng(seed)) for seed in range(12)]
    assert np.array_equal(outputs[0], augmentation(image, np.random.default_rng(0)))
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert len({o.tobytes() for o in outputs}) == 12
    assert SourceAugmentation(per_source=0)(image, np.random.default_rng(0)) is image
    inverted = SourceAugmentation(ops=["invert"], per_source=1)(image, np.random.default_rng(0))
    assert np.array_equal(inverted, 255 - image)
    with pytest.raises(ConfigError, match="data.source_augmentation.ops=.*blur.*is not allowed.*one of gamma"):
        SourceAugmentation(ops=["invert", "blur"])
    with pytest.raises(ConfigError, match="each op once"):
        SourceAugmentation(ops=["invert", "invert"], per_source=1)
    with pytest.raises(ConfigError, match="per_source=3 is not allowed: it must be at most the 2 ops"):
        SourceAugmentation(ops=["invert", "gamma"], per_source=3)


def test_texture_source_applies_the_source_augmentation(tmp_path):
    folder = tmp_path / "textures"
    folder.mkdir()
    cv2.imwrite(str(folder / "t.png"), np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    plain = TextureSource(folder, image_size=32).sample(np.random.default_rng(3))
    inverting = TextureSource(folder, image_size=32, augmentation=SourceAugmentation(["invert"], 1))
    assert np.array_equal(inverting.sample(np.random.default_rng(3)), 255 - plain)


def test_in_place_sources_recolour_the_base_image_without_moving_it(tmp_path):
    """data.source_augmentation.in_place: that share of the sources is the image the anomaly goes into, recoloured
    where it stands (rotate is skipped: a turned copy would bring a foreign texture, not a change of tone)."""
    folder = tmp_path / "textures"
    folder.mkdir()
    cv2.imwrite(str(folder / "t.png"), np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    base = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    always = TextureSource(folder, 32, SourceAugmentation(["rotate", "invert"], 2), in_place=1.0)
    assert all(np.array_equal(always.sample(np.random.default_rng(s), base_image=base), 255 - base) for s in range(5))
    never = TextureSource(folder, 32, SourceAugmentation(["rotate", "invert"], 2))
    texture = never.sample(np.random.default_rng(3))  # in_place = 0 draws nothing more: the texture crop as before
    assert np.array_equal(texture, never.sample(np.random.default_rng(3), base_image=base))
    half = TextureSource(folder, 32, SourceAugmentation(["invert"], 1), in_place=0.5)
    recoloured = [np.array_equal(half.sample(np.random.default_rng(s), base_image=base), 255 - base)
                  for s in range(400)]
    assert 0.42 < np.mean(recoloured) < 0.58
    with pytest.raises(ValueError, match="base image"):
        always.sample(np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"data.source_augmentation.in_place=0.5 needs photometric ops"):
        TextureSource(folder, 32, SourceAugmentation(["rotate"], 1), in_place=0.5)


def test_texture_source_reads_folders_recursively_and_crops_to_size(tmp_path):
    folder = tmp_path / "dtd" / "images" / "banded"
    folder.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / f"t{i}.jpg"), np.full((50, 70, 3), 40 * i, np.uint8))
    assert resolve_texture_dir(None, tmp_path / "mvtec") == tmp_path / "dtd" / "images"
    source = TextureSource(resolve_texture_dir(None, tmp_path / "mvtec"), image_size=24)
    assert source.uses_textures and len(source) == 3
    crop = source.sample(np.random.default_rng(0))
    assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, source.sample(np.random.default_rng(0)))


def test_texture_source_without_folder_augments_the_normal_image(tmp_path):
    assert resolve_texture_dir(None, tmp_path / "data" / "mvtec") is None
    source = TextureSource(None, image_size=32)
    normal = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    out = source.sample(np.random.default_rng(1), normal_image=normal)
    assert out.shape == (32, 32, 3) and not np.array_equal(out, cv2.resize(normal, (32, 32)))
    with pytest.raises(ValueError, match="normal image"):
        source.sample(np.random.default_rng(1))


def test_texture_dir_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.texture_dir"):
        resolve_texture_dir(tmp_path / "missing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        TextureSource(tmp_path / "empty", 32)
