"""Augmented and extended anomalies: the defect of a seen anomaly pasted onto another normal image.

E = (1 - M) * N + (1 - beta) * C + beta * (M * N), C = M * (augmented seen image), on images in [0, 1].
The paste position is chosen in the dataset worker (numpy, `place_defect`) so it lands on the target's
foreground (an object, not the background around it); the blend itself runs batched on the training device.
"""
from __future__ import annotations

import numpy as np
import torch


def extend_anomalies(normal: torch.Tensor, content: torch.Tensor, mask: torch.Tensor,
                     beta: torch.Tensor) -> torch.Tensor:
    """E = (1 - M) * N + (1 - beta) * C + beta * (M * N) with C = M * content (content outside M is ignored).

    normal, content (B,3,H,W) in [0, 1]; mask (B,1,H,W) in {0, 1}; beta (B,1,1,1).
    """
    defect = mask * content
    return (1 - mask) * normal + (1 - beta) * defect + beta * (mask * normal)


def place_defect(defect_image: np.ndarray, defect_mask: np.ndarray, foreground_mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Move a defect (its mask's bounding box) so its centre lands on the target's foreground, never off-image.

    defect_image (H,W,3) and defect_mask (H,W) in {0,1} come from an (augmented) seen anomaly; foreground_mask
    (H,W) bool is the target normal image's foreground (all True for textures). Returns (content, mask): the defect
    pixels at their new place (zero elsewhere) and the moved mask, both of the input size and dtypes. The centre is
    drawn among the foreground pixels where the whole box fits; if the box cannot be centred on any of them, the
    nearest in-image position to a random foreground pixel is used. An empty defect mask places nothing.
    """
    height, width = defect_mask.shape
    if defect_image.shape[:2] != (height, width) or foreground_mask.shape != (height, width):
        raise ValueError(f"place_defect needs equal sizes: defect image {defect_image.shape[:2]}, "
                         f"defect mask {defect_mask.shape}, foreground {foreground_mask.shape}")
    content = np.zeros_like(defect_image)
    placed = np.zeros_like(defect_mask)
    rows, cols = np.nonzero(defect_mask)
    if rows.size == 0:
        return content, placed
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box_h, box_w = bottom - top, right - left

    fg_rows, fg_cols = np.nonzero(foreground_mask)
    if fg_rows.size == 0:  # no foreground at all: the whole image is a valid target
        fg_rows, fg_cols = np.nonzero(np.ones((height, width), bool))
    half_h, half_w = box_h // 2, box_w // 2
    fits = ((fg_rows >= half_h) & (fg_rows <= height - box_h + half_h)
            & (fg_cols >= half_w) & (fg_cols <= width - box_w + half_w))
    if fits.any():
        fg_rows, fg_cols = fg_rows[fits], fg_cols[fits]
    pick = rng.integers(fg_rows.size)
    new_top = int(np.clip(fg_rows[pick] - half_h, 0, height - box_h))
    new_left = int(np.clip(fg_cols[pick] - half_w, 0, width - box_w))

    box_mask = defect_mask[top:bottom, left:right]
    target = (slice(new_top, new_top + box_h), slice(new_left, new_left + box_w))
    placed[target] = box_mask
    content[target] = defect_image[top:bottom, left:right] * box_mask[..., None].astype(defect_image.dtype)
    return content, placed
