"""Foreground estimate: finds an object on a plain background, falls back to the whole image for textures."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_lightning.synthesis.foreground import estimate_foreground


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_object_on_plain_background_with_a_hole():
    image = np.full((96, 128, 3), 30, np.uint8)
    cv2.circle(image, (64, 48), 30, (200, 180, 90), -1)
    cv2.circle(image, (64, 48), 8, (30, 30, 30), -1)  # a hole showing the background: filled as object
    foreground = estimate_foreground(noisy(image, 6))
    truth = np.zeros((96, 128), np.uint8)
    cv2.circle(truth, (64, 48), 30, 1, -1)
    iou = (foreground & truth.astype(bool)).sum() / (foreground | truth.astype(bool)).sum()
    assert foreground.dtype == bool and foreground.shape == (96, 128)
    assert iou > 0.9 and foreground[48, 64]


def test_small_specks_are_dropped():
    image = np.full((96, 96, 3), 20, np.uint8)
    cv2.rectangle(image, (30, 30), (65, 65), (220, 220, 220), -1)
    image[5:7, 80:82] = 220  # a 2x2 speck of dust
    foreground = estimate_foreground(image)
    assert foreground[48, 48] and not foreground[6, 81] and not foreground[0, 0]


@pytest.mark.parametrize("kind", ["noise", "stripes", "flat"])
def test_textures_and_flat_images_are_all_foreground(kind):
    rng = np.random.default_rng(1)
    if kind == "noise":
        image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    elif kind == "stripes":
        image = np.zeros((64, 64, 3), np.uint8)
        image[:, ::8] = 255
        image[:, 1::8] = 255
    else:
        image = np.full((64, 64, 3), 128, np.uint8)
    assert estimate_foreground(image).all()


def test_object_filling_the_frame_falls_back_to_whole_image():
    image = np.full((64, 64, 3), 30, np.uint8)
    image[1:63, 1:63] = 200  # 97 % of the image
    assert estimate_foreground(image).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="RGB uint8"):
        estimate_foreground(np.zeros((8, 8), np.uint8))


def test_real_surface_images_count_as_texture(shared_data):
    """Magnetic-tile and Kolektor images are surfaces without a separate background: paste anywhere."""
    from prn_lightning.imaging.io import list_images, read_image

    for category in ("magnetic_tile", "kolektor"):
        for path in list_images(shared_data / category / "train" / "good")[:5]:
            image = cv2.resize(read_image(path), (128, 128), interpolation=cv2.INTER_AREA)
            assert estimate_foreground(image).all(), path
