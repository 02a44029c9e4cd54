"""The decoded-image cache returns exactly what imaging.tensors.load_image does, once per file, within its budget."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from prn_lightning.data.image_cache import ImageCache
from prn_lightning.imaging import tensors
from prn_lightning.imaging.io import ImageReadError


def write_images(folder, count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (50 + 7 * i, 70, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_cached_images_equal_decoded_ones_and_are_private_copies(tmp_path) -> None:
    paths = write_images(tmp_path, 3)
    cache = ImageCache()
    cache.preload(paths[:2], 32)
    assert len(cache) == 2
    for path in paths:
        first = cache.load(path, 32)
        assert np.array_equal(first, tensors.load_image(path, 32)) and first.shape == (32, 32, 3)
        first[:] = 0  # a caller drawing on its copy must not alter the cache
        assert np.array_equal(cache.load(path, 32), tensors.load_image(path, 32))
    assert len(cache) == 3 and cache.bytes == 3 * 32 * 32 * 3
    assert np.array_equal(cache.load(paths[0], 16), tensors.load_image(paths[0], 16)) and len(cache) == 4  # per size


def test_a_rewritten_file_is_read_again(tmp_path) -> None:
    path = write_images(tmp_path, 1)[0]
    cache = ImageCache()
    before = cache.load(path, 24)
    cv2.imwrite(str(path), np.full((40, 40, 3), 200, np.uint8))
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))  # a new modification time even on coarse clocks
    after = cache.load(path, 24)
    assert not np.array_equal(before, after) and np.array_equal(after, tensors.load_image(path, 24))


def test_the_budget_bounds_what_is_kept_not_what_is_served(tmp_path) -> None:
    paths = write_images(tmp_path, 4)
    cache = ImageCache(max_bytes=2 * 16 * 16 * 3)
    cache.preload(paths, 16)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    for path in paths:
        assert np.array_equal(cache.load(path, 16), tensors.load_image(path, 16))
    assert len(cache) == 2


def test_unreadable_files_fail_on_use_with_the_usual_message(tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    cache = ImageCache()
    cache.preload([broken, missing], 16)  # skipped, not raised: errors surface where they always did
    assert len(cache) == 0
    for path in (broken, missing):
        with pytest.raises(ImageReadError, match=path.name):
            cache.load(path, 16)
