"""Decoded and resized images kept in memory for a run, so each file is read, decoded and resized once.

A category is a few hundred images (192 KiB each at 256 px), and a training epoch reads every normal image again:
without a cache the loader workers spend most of their time decoding the same JPEGs. The training set's images are
decoded once in the main process when the dataset is built (threads: OpenCV releases the GIL), and DataLoader
workers forked afterwards share those pages copy-on-write; anything else a process reads is kept as it comes (with
the spawn start method, each worker fills its own cache that way). A per-process memory budget bounds it: past the
budget, images are decoded as before. An entry is keyed by path, size and the file's modification time and length,
so a file rewritten on disk is read again.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from prn_lightning.errors import DatasetError
from prn_lightning.imaging import tensors

MAX_BYTES = 1 << 30  # per process: ~5,400 images at 256 px, ~1,300 at 512 px
Size = int | tuple[int, int] | list[int]


class ImageCache:
    """`load(path, size, **options)` = `imaging.tensors.load_image(path, size, **options)`, from memory after the
    first time."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._images: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    @staticmethod
    def _key(path: str | Path, size: Size, options: dict[str, Any]) -> tuple:
        stat = os.stat(path)
        size = tuple(size) if isinstance(size, list) else size
        return str(path), size, tuple(sorted(options.items())), stat.st_mtime_ns, stat.st_size

    def load(self, path: str | Path, size: Size, **options: Any) -> np.ndarray:
        """`tensors.load_image(path, size, **options)`, a fresh copy the caller may modify."""
        try:
            key = self._key(path, size, options)
        except OSError:  # reading it reports the problem, naming the file
            return tensors.load_image(path, size, **options)
        image = self._images.get(key)
        if image is None:
            image = tensors.load_image(path, size, **options)
            self._keep(key, image)
        return image.copy()

    def _keep(self, key: tuple, image: np.ndarray) -> None:
        with self._lock:
            if key not in self._images and self.bytes + image.nbytes <= self.max_bytes:
                self._images[key] = image
                self.bytes += image.nbytes

    def preload(self, paths: list[str | Path], size: Size, **options: Any) -> None:
        """Decode every image not yet held, on all cores, until the budget is used. A file that cannot be read is
        skipped here: reading it later raises the usual error, where it always did."""
        unique = sorted({str(p) for p in paths})
        if not unique:
            return

        def read(path: str) -> None:
            if self.bytes < self.max_bytes:
                try:
                    key = self._key(path, size, options)
                    if key not in self._images:
                        self._keep(key, tensors.load_image(path, size, **options))
                except (OSError, DatasetError):
                    pass

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(read, unique))


_CACHE = ImageCache()


def load_image(path: str | Path, size: Size, **options: Any) -> np.ndarray:
    """`imaging.tensors.load_image(path, size, **options)` through this process's cache: RGB uint8 (H, W, 3)."""
    return _CACHE.load(path, size, **options)


def preload_images(paths: list[str | Path], size: Size, **options: Any) -> None:
    """Decode `paths` as `load_image` would into this process's cache now (before loader workers fork)."""
    _CACHE.preload(paths, size, **options)
