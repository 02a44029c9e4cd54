"""Every image and mask of a category checked before the first training step, so a bad file costs seconds.

Without this a truncated test image is found when the test pass reaches it, after the whole training run. The
check is cheap: the file header gives the size (PIL, no pixel decoding); PNG files are verified chunk by chunk (CRCs,
no inflating), JPEG files decoded at 1/8 scale (libjpeg still walks all the compressed data, so truncation shows),
other formats decoded in full. Masks are decoded in full, at the training resolution, to find the empty ones.

What is found:
- unreadable files (missing, empty, truncated, not an image): one error listing every one of them;
- anomalies whose mask is empty at the training resolution: they stay in the test set (they count for image AUROC,
  they add no anomalous pixel) but are never drawn as seen or validation anomalies; a warning lists them;
- images smaller than `TINY_SIDE` pixels on a side, and masks whose size differs from their image's (they are
  resized with nearest neighbour): a warning each, with counts and the first few paths.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from prn_lightning.data.sources.records import ANOMALOUS, CategorySplits, Sample
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.tensors import load_mask

TINY_SIDE = 32  # an image smaller than this on a side carries almost nothing at the training resolution
LISTED = 5  # paths named in a warning
MAX_THREADS = 8  # decoding releases the GIL


class DataWarning(UserWarning):
    """Something in the dataset that a run can use, but that the user should know about."""


class UnreadableFilesError(DatasetError):
    """Images or masks that cannot be decoded; the message lists every one with the reason."""


@dataclass
class DataReport:
    """The outcome of `check_splits`; `raise_for_unreadable` and `warn` act on it."""

    num_files: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    tiny_images: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)
    resized_masks: list[tuple[Path, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    empty_masks: list[Sample] = field(default_factory=list)

    def raise_for_unreadable(self) -> None:
        if self.unreadable:
            listing = "; ".join(f"{path} ({reason})" for path, reason in self.unreadable)
            raise UnreadableFilesError(
                f"{len(self.unreadable)} of {self.num_files} dataset files cannot be read: {listing}; replace or "
                "remove them (and their masks) from the dataset folder, then start again")

    def warnings(self) -> list[str]:
        """One message per kind of finding, with the count and the first few paths."""
        messages = []
        if self.empty_masks:
            messages.append(
                f"{len(self.empty_masks)} anomalous image(s) have an empty mask at the training resolution: they stay "
                "in the test set (image-level metrics count them as anomalous; pixel metrics get no defect pixel "
                "from them) and are never drawn as seen or validation anomalies: "
                + _first([s.mask_path for s in self.empty_masks]))
        if self.tiny_images:
            messages.append(
                f"{len(self.tiny_images)} image(s) are smaller than {TINY_SIDE} px on a side and get upscaled a lot: "
                + _first([f"{p} ({w}x{h})" for p, (h, w) in self.tiny_images]))
        if self.resized_masks:
            messages.append(
                f"{len(self.resized_masks)} mask(s) differ in size from their image and are resized with nearest "
                "neighbour: " + _first([f"{p} (mask {mw}x{mh}, image {iw}x{ih})"
                                        for p, (mh, mw), (ih, iw) in self.resized_masks]))
        return messages

    def warn(self) -> None:
        for message in self.warnings():
            warnings.warn(message, DataWarning, stacklevel=2)


def _first(items: Sequence[object]) -> str:
    shown = ", ".join(str(item) for item in items[:LISTED])
    return shown + (f", ... ({len(items) - LISTED} more)" if len(items) > LISTED else "")


def _decodes(path: Path, flags: int) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    return cv2.imdecode(data, flags) if data.size else None


def probe_image(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file whose data decodes; `OSError`/`ValueError` with the reason otherwise."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    image_format, size = None, None
    try:
        with Image.open(path) as image:
            image_format, size = image.format, image.size
            if image_format == "PNG":
                image.verify()  # every chunk's CRC, up to IEND: a cut-off file fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        image_format = None  # PIL cannot vouch for it: let OpenCV, which training uses, decide
    if image_format == "PNG" and size is not None:
        return size[1], size[0]
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if image_format == "JPEG" else cv2.IMREAD_UNCHANGED
    decoded = _decodes(path, flags)
    if decoded is None:
        raise ValueError("cannot be decoded: truncated or not an image")
    return (size[1], size[0]) if size is not None else tuple(decoded.shape[:2])


def _probe(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    try:
        return probe_image(path), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as err:
        return None, getattr(err, "strerror", None) or str(err)


def _mask_is_empty(path: Path, image_size: int | Sequence[int], options: dict[str, Any]) -> bool:
    return not load_mask(path, image_size, **options).any()


def check_splits(splits: CategorySplits, image_size: int | Sequence[int], *, threads: int | None = None,
                 **mask_options: Any) -> DataReport:
    """Probe every image and mask of `splits` (train, test; validation and seen anomalies are drawn from them).

    `mask_options` go to `load_mask` (e.g. the resize policy), so "empty" means empty as training sees the mask."""
    samples = list(splits.train) + list(splits.test)
    images = list(dict.fromkeys(s.image_path for s in samples))
    masks = list(dict.fromkeys(s.mask_path for s in samples if s.mask_path is not None))
    files = images + masks
    workers = threads or min(MAX_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probed = dict(zip(files, pool.map(_probe, files)))
        report = DataReport(num_files=len(files))
        report.unreadable = [(path, reason) for path, (_, reason) in probed.items() if reason is not None]
        sizes = {path: size for path, (size, _) in probed.items() if size is not None}
        report.tiny_images = [(p, sizes[p]) for p in images if p in sizes and min(sizes[p]) < TINY_SIDE]
        anomalies = [s for s in samples if s.label == ANOMALOUS and s.mask_path in sizes]
        report.resized_masks = [(s.mask_path, sizes[s.mask_path], sizes[s.image_path]) for s in anomalies
                                if s.image_path in sizes and sizes[s.mask_path] != sizes[s.image_path]]
        empty = list(pool.map(lambda s: _mask_is_empty(s.mask_path, image_size, mask_options), anomalies))
    report.empty_masks = [s for s, is_empty in zip(anomalies, empty) if is_empty]
    return report
