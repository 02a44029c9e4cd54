"""Reading images and masks the same way for every dataset.

Images come back as RGB uint8 (H, W, 3): grayscale sources (magnetic tile, Kolektor, DAGM) are replicated to three
channels so an ImageNet backbone can read them. Masks come back as uint8 (H, W) in {0, 1}, binarised at more than
half their maximum, so anti-aliased or {0, 1}/{0, 255}-coded masks all mean the same thing.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from prn_lightning.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(DatasetError):
    """An image or mask file that cannot be read or decoded; the message names the file."""


def is_image_file(path: str | Path) -> bool:
    """True for a file with a common image extension (case-insensitive); hidden files are never images."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (deterministic order on every platform)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


def _decode(path: Path, flags: int) -> np.ndarray:
    # np.fromfile + imdecode also reads paths with non-ASCII characters, which cv2.imread does not on Windows.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"cannot read image file {path}: {err.strerror or err}") from err
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot decode image file {path}: it is empty, truncated or not an image; "
                           "replace it or remove it from the dataset folder")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array (H, W, 3); grayscale images are replicated to 3 channels, alpha is dropped."""
    image = _decode(Path(path), cv2.IMREAD_COLOR)  # IMREAD_COLOR: 8-bit, 3 channels, grayscale replicated
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Binary uint8 mask (H, W) in {0, 1}: pixels above half the mask's maximum are 1 (an all-zero mask stays 0).

    A colour mask counts a pixel as defective when any channel is. When `shape` (H, W) is given and differs from
    the mask's own size (a mask saved at another resolution than its image), the mask is resized with
    nearest-neighbour interpolation after binarisation, so it stays binary.
    """
    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)  # any colour channel; an alpha channel is not a defect
    peak = mask.max()
    binary = (mask > peak / 2).astype(np.uint8) if peak > 0 else np.zeros(mask.shape, np.uint8)
    if shape is not None and tuple(shape) != binary.shape:
        binary = cv2.resize(binary, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_NEAREST)
    return binary
