"""Reading images and masks: every common format, grayscale to RGB, binarised masks, clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from prn_lightning.errors import DatasetError
from prn_lightning.imaging.io import is_image_file, list_images, read_image, read_mask


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.JPEG", "a.bmp", "a.tif", "a.TIFF", "a.PNG"])
def test_read_image_formats_rgb_order(tmp_path, name):
    bgr = np.zeros((12, 10, 3), np.uint8)
    bgr[..., 0], bgr[..., 2] = 200, 30  # blue-ish in OpenCV's BGR order
    path = tmp_path / name
    assert cv2.imwrite(str(path), bgr)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (12, 10, 3)
    assert abs(int(image[..., 2].mean()) - 200) <= 3 and abs(int(image[..., 0].mean()) - 30) <= 3  # RGB


def test_grayscale_and_alpha_become_three_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    image = read_image(tmp_path / "g.png")
    assert image.shape == (8, 8, 3) and (image == gray[..., None]).all()
    rgba = np.dstack([np.full((8, 8, 3), 90, np.uint8), np.zeros((8, 8), np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_image(tmp_path / "a.png").shape == (8, 8, 3)


def test_unreadable_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="broken.png"):
        read_image(broken)
    with pytest.raises(DatasetError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.png"):
        read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("peak", [1, 255])
def test_masks_are_binary_whatever_their_coding(tmp_path, peak):
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 1:3] = peak
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1} and out.sum() == 4


def test_antialiased_mask_threshold_at_half_max(tmp_path):
    mask = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 0, 0, 1, 1, 1]]


def test_empty_mask_stays_empty_and_colour_mask_counts_any_channel(tmp_path):
    cv2.imwrite(str(tmp_path / "zero.png"), np.zeros((5, 5), np.uint8))
    assert read_mask(tmp_path / "zero.png").sum() == 0
    colour = np.zeros((5, 5, 3), np.uint8)
    colour[2, 2, 2] = 255  # red only
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    assert read_mask(tmp_path / "c.png").sum() == 1


def test_mask_resized_with_nearest_to_the_image_shape(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    cv2.imwrite(str(tmp_path / "m.bmp"), mask)
    out = read_mask(tmp_path / "m.bmp", shape=(8, 6))
    assert out.shape == (8, 6) and set(np.unique(out)) == {0, 1}
    assert out[:4, :3].all() and not out[4:, :].any() and not out[:, 3:].any()
    assert read_mask(tmp_path / "m.bmp", shape=(4, 4)).shape == (4, 4)


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ["b.PNG", "a.jpg", ".hidden.png", "notes.txt", "c.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
    assert is_image_file("x.JpEg") and not is_image_file("x.txt")
