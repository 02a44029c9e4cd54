"""Image tensors the same way everywhere: resize, [0, 1] float tensors (the network normalises them itself).

The input size is (H, W) (`data.image_size`: an int for a square, or [H, W]) and the resize policy (`data.resize`):
- squash: the image is stretched to H x W, whatever its aspect;
- keep-aspect: the image is scaled to fit inside H x W with its aspect kept, centred, and the rest padded black
  (masks: padded 0); `content_box` says where it landed. Thin defects keep their shape, at the cost of padding.
Images are resized with INTER_AREA when shrinking (no aliasing) and INTER_LINEAR when enlarging; masks with
nearest-neighbour so they stay binary.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from prn_lightning.config_checks import RESIZE_POLICIES
from prn_lightning.imaging.io import read_image, read_mask

Size = int | Sequence[int]


def image_hw(size: Size) -> tuple[int, int]:
    """(H, W) of an int (square) or an (H, W) pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def content_box(height: int, width: int, size: Size, resize: str = "squash") -> tuple[int, int, int, int]:
    """(top, left, h, w): where an image of `height` x `width` lands in the `size` canvas under `resize`."""
    out_h, out_w = image_hw(size)
    if resize == "squash":
        return 0, 0, out_h, out_w
    if resize != "keep-aspect":
        raise ValueError(f"data.resize={resize} is not a resize policy; choose one of {', '.join(RESIZE_POLICIES)}")
    scale = min(out_h / height, out_w / width)
    box_h, box_w = min(out_h, max(1, round(height * scale))), min(out_w, max(1, round(width * scale)))
    return (out_h - box_h) // 2, (out_w - box_w) // 2, box_h, box_w


def _place(array: np.ndarray, size: Size, resize: str, interpolation: int | None) -> np.ndarray:
    """Resize `array` into its content box and pad the rest of the canvas with zeros."""
    out_h, out_w = image_hw(size)
    top, left, box_h, box_w = content_box(*array.shape[:2], size, resize)
    if array.shape[:2] != (box_h, box_w):
        if interpolation is None:  # images: no aliasing when shrinking
            shrink = array.shape[0] > box_h or array.shape[1] > box_w
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        array = cv2.resize(array, (box_w, box_h), interpolation=interpolation)
    if (box_h, box_w) == (out_h, out_w):
        return array
    canvas = np.zeros((out_h, out_w, *array.shape[2:]), array.dtype)
    canvas[top:top + box_h, left:left + box_w] = array
    return canvas


def resize_image(image: np.ndarray, size: Size, resize: str = "squash") -> np.ndarray:
    """An image (H, W[, C]) at `size` under the `resize` policy: INTER_AREA when shrinking, INTER_LINEAR when
    enlarging; the input itself when it already has that size (squash)."""
    return _place(image, size, resize, None)


def resize_mask(mask: np.ndarray, size: Size, resize: str = "squash") -> np.ndarray:
    """A {0, 1} mask at `size` under the `resize` policy (nearest-neighbour, padding 0)."""
    return _place(mask, size, resize, cv2.INTER_NEAREST)


def load_image(path: str | Path, size: Size, resize: str = "squash") -> np.ndarray:
    """RGB uint8 (H, W, 3) at `size` under the `resize` policy."""
    return resize_image(read_image(path), size, resize)


def load_mask(path: str | Path | None, size: Size, resize: str = "squash") -> np.ndarray:
    """uint8 (H, W) in {0, 1} at `size` under the `resize` policy (nearest-neighbour); all zeros when `path` is None
    (normal image)."""
    if path is None:
        return np.zeros(image_hw(size), np.uint8)
    if resize == "squash":
        return read_mask(path, shape=image_hw(size))
    return resize_mask(read_mask(path), size, resize)


def map_to_image(amap: np.ndarray, height: int, width: int, resize: str = "squash") -> np.ndarray:
    """An anomaly map (H, W) at the input size, back at an image's own `height` x `width`: its content box cut out
    of the padding (keep-aspect), then resized bilinearly."""
    top, left, box_h, box_w = content_box(height, width, amap.shape[:2], resize)
    return cv2.resize(amap[top:top + box_h, left:left + box_w], (width, height), interpolation=cv2.INTER_LINEAR)


def unpadded(image: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels whose row and column both hold a non-black pixel of the RGB `image` (H, W, 3), i.e.
    not the black padding of keep-aspect. Synthesised defects are kept there, never on the padding."""
    return image.any(axis=(1, 2))[:, None] & image.any(axis=(0, 2))[None, :]


def unpadded_batch(images: torch.Tensor) -> torch.Tensor:
    """`unpadded` for a batch (B, 3, H, W) on its own device, as float (B, 1, H, W) in {0, 1}."""
    rows = images.amax(dim=(1, 3)) > 0
    cols = images.amax(dim=(1, 2)) > 0
    return (rows[:, None, :, None] & cols[:, None, None, :]).to(images.dtype)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).div_(255.0)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """{0, 1} (H, W) -> float32 (1, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32).unsqueeze(0)
