"""Image tensors the same way everywhere: resize, [0, 1] float tensors (the network normalises them itself).

Images are resized with INTER_AREA when shrinking (no aliasing) and INTER_LINEAR when enlarging; masks with
nearest-neighbour so they stay binary.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from prn_lightning.imaging.io import read_image, read_mask


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """`size` x `size` copy of an image: INTER_AREA when shrinking, INTER_LINEAR when enlarging."""
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    shrink = height > size or width > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3)."""
    return resize_image(read_image(path), size)


def load_mask(path: str | Path | None, size: int) -> np.ndarray:
    """uint8 (size, size) in {0, 1} (nearest-neighbour resize); all zeros when `path` is None (normal image)."""
    if path is None:
        return np.zeros((size, size), np.uint8)
    return read_mask(path, shape=(size, size))


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).div_(255.0)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """{0, 1} (H, W) -> float32 (1, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32).unsqueeze(0)
