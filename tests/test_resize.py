"""Input size (H, W) and resize policy: squash stretches, keep-aspect scales to fit and pads; masks follow images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from prn_lightning.imaging.tensors import (
    content_box,
    image_hw,
    load_image,
    load_mask,
    map_to_image,
    resize_image,
    resize_mask,
    unpadded,
    unpadded_batch,
)
from prn_lightning.synthesis.textures import TextureSource


def portrait(tmp_path):
    """A 630 x 250 grey image (Kolektor's shape) with a bright 6 x 40 px horizontal bar, and the bar's mask."""
    image = np.full((630, 250, 3), 90, np.uint8)
    image[300:306, 100:140] = 250
    mask = np.zeros((630, 250), np.uint8)
    mask[300:306, 100:140] = 255
    cv2.imwrite(str(tmp_path / "image.png"), image)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    return tmp_path / "image.png", tmp_path / "mask.png"


def test_image_hw_and_content_box():
    assert image_hw(256) == (256, 256) and image_hw([640, 256]) == (640, 256)
    assert content_box(630, 250, 256, "squash") == (0, 0, 256, 256)
    assert content_box(630, 250, 256, "keep-aspect") == (0, 77, 256, 102)  # 250 * 256 / 630 = 101.6
    assert content_box(300, 400, [288, 384], "keep-aspect") == (0, 0, 288, 384)  # native aspect: no padding
    assert content_box(300, 400, [256, 256], "keep-aspect") == (32, 0, 192, 256)
    with pytest.raises(ValueError, match="data.resize=stretch"):
        content_box(10, 10, 32, "stretch")


@pytest.mark.parametrize("size, resize", [(256, "squash"), ((640, 256), "squash"), ((512, 192), "squash"),
                                          (256, "keep-aspect"), ((256, 512), "keep-aspect")])
def test_masks_follow_images(tmp_path, size, resize):
    image_path, mask_path = portrait(tmp_path)
    image, mask = load_image(image_path, size, resize), load_mask(mask_path, size, resize)
    assert image.shape == (*image_hw(size), 3) and mask.shape == image_hw(size) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    bright = (image[..., 0] > 170).astype(np.uint8)  # the bar, up to the resampling of its edges
    ring = np.ones((3, 3), np.uint8)
    assert bright.any() and not (mask & ~cv2.dilate(bright, ring).astype(bool)).any()
    assert not (bright & ~cv2.dilate(mask, ring).astype(bool)).any()
    top, left, box_h, box_w = content_box(630, 250, size, resize)
    outside = np.ones(image_hw(size), bool)
    outside[top:top + box_h, left:left + box_w] = False
    assert (image[outside] == 0).all() and (mask[outside] == 0).all()  # padding: black, never defective
    assert (image[~outside] > 0).all()


def test_keep_aspect_keeps_a_thin_bar_thin_and_native_size_keeps_it_whole(tmp_path):
    """Squashing 630 x 250 into 256 x 256 makes the 6 x 40 bar 2.4 x 41; keep-aspect keeps its 1:6.7 shape, and a
    native-aspect [640, 256] keeps its size."""
    image_path, _ = portrait(tmp_path)

    def bar(size, resize):
        rows, cols = np.nonzero(load_image(image_path, size, resize)[..., 0] > 170)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    squashed, kept, native = bar(256, "squash"), bar(256, "keep-aspect"), bar((640, 256), "squash")
    assert squashed[0] <= 3 and squashed[1] >= 40
    assert abs(kept[1] / kept[0] - 40 / 6) < 1.5
    assert native[0] >= 6 and native[1] >= 40


def test_resize_returns_the_input_when_it_already_fits():
    image = np.zeros((64, 32, 3), np.uint8)
    assert resize_image(image, (64, 32)) is image and resize_image(image, (64, 32), "keep-aspect") is image
    assert resize_mask(np.ones((64, 32), np.uint8), 16, "keep-aspect")[:, :4].sum() == 0  # 16 x 8, centred


@pytest.mark.parametrize("size", [(64, 32), (32, 96), 48])
def test_texture_source_gives_the_input_size_without_stretching(tmp_path, size):
    folder = tmp_path / "textures"
    folder.mkdir()
    stripes = np.zeros((120, 160, 3), np.uint8)
    stripes[:, ::8] = 255  # vertical stripes 8 px apart
    cv2.imwrite(str(folder / "stripes.png"), stripes)
    source = TextureSource(folder, size)
    for seed in range(6):
        crop = source.sample(np.random.default_rng(seed))
        assert crop.shape == (*image_hw(size), 3)
    normal = np.random.default_rng(0).integers(0, 255, (*image_hw(size), 3), dtype=np.uint8)
    assert TextureSource(None, size).sample(np.random.default_rng(0), normal_image=normal).shape == normal.shape


def test_unpadded_finds_the_image_inside_its_padding():
    image = np.zeros((16, 24, 3), np.uint8)
    image[4:12, 2:20] = 7
    image[6, 5] = 0  # a black pixel inside the image is not padding
    inside = unpadded(image)
    expected = np.zeros((16, 24), bool)
    expected[4:12, 2:20] = True
    assert np.array_equal(inside, expected)
    batch = torch.from_numpy(np.stack([image, image[::-1]])).permute(0, 3, 1, 2).float()
    masks = unpadded_batch(batch)
    assert masks.shape == (2, 1, 16, 24)
    assert np.array_equal(masks[0, 0].numpy(), expected) and np.array_equal(masks[1, 0].numpy(), expected[::-1])


@pytest.mark.parametrize("size, resize", [(256, "squash"), ((96, 160), "keep-aspect"), (64, "keep-aspect")])
def test_a_map_goes_back_to_the_image_it_came_from(tmp_path, size, resize):
    """The bar's mask, taken to the input size and back with `map_to_image`, lands on the bar again."""
    _, mask_path = portrait(tmp_path)
    small = load_mask(mask_path, size, resize).astype(np.float32)
    back = map_to_image(small, 630, 250, resize)
    assert back.shape == (630, 250)
    rows, cols = np.nonzero(back > 0.5)
    pixel = max(630 / image_hw(size)[0], 250 / image_hw(size)[1])  # one input pixel, in image pixels
    assert abs(rows.mean() - 302.5) < pixel and abs(cols.mean() - 119.5) < pixel
