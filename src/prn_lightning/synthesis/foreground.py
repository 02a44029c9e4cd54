"""Foreground estimate for object categories, so extended anomalies are pasted onto the object, not the background.

Heuristic (industrial images: one object on a fairly uniform background that touches the image border):
1. background colour = per-channel median of a border strip (3 % of the shorter side, at least 1 pixel);
2. each pixel's Euclidean distance to that colour (in RGB, after a light Gaussian blur against sensor noise);
3. Otsu threshold on the distances (foreground = far from the background colour);
4. morphological close then open (elliptic kernel, 2 % of the shorter side) to fill cracks and drop specks;
5. keep the largest connected component and any other component at least a quarter of its size, fill holes.
The whole image counts as foreground (pasting anywhere is then the safe choice) when there is no distinct object:
- the distances are not clearly two-class: Otsu's separability (between-class over total variance) under 0.8;
  a unimodal texture scores about 0.64 (2/pi for a Gaussian), a uniform one 0.75, an object on a plain ground ~1;
- the estimate reaches the border about as often as the interior (border-strip share >= half the overall share),
  as a texture's bright or dark patches do, while an object sits inside a background frame;
- it is degenerate: under 5 % or over 95 % of the image.
"""
from __future__ import annotations

import cv2
import numpy as np

MIN_FRACTION = 0.05
MAX_FRACTION = 0.95
MIN_SEPARABILITY = 0.8


def estimate_foreground(image: np.ndarray) -> np.ndarray:
    """Boolean foreground mask (H, W) of an RGB uint8 image (H, W, 3); all True when the estimate is degenerate."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"estimate_foreground expects an RGB uint8 image (H, W, 3), got {image.dtype} "
                         f"{image.shape}")
    height, width = image.shape[:2]
    short = min(height, width)
    whole = np.ones((height, width), bool)

    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=max(0.5, short / 256)).astype(np.float32)
    strip = max(1, round(0.03 * short))
    border = np.concatenate([blurred[:strip].reshape(-1, 3), blurred[-strip:].reshape(-1, 3),
                             blurred[:, :strip].reshape(-1, 3), blurred[:, -strip:].reshape(-1, 3)])
    distance = np.linalg.norm(blurred - np.median(border, axis=0), axis=2)
    if distance.max() <= 0:
        return whole
    scaled = np.round(distance * (255.0 / distance.max())).astype(np.uint8)
    threshold, binary = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if _separability(scaled, threshold) < MIN_SEPARABILITY:
        return whole

    size = max(3, round(0.02 * short) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)

    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return whole
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= areas.max() / 4)
    foreground = np.isin(labels, keep).astype(np.uint8)
    foreground = _fill_holes(foreground)

    fraction = foreground.mean()
    frame = np.ones((height, width), bool)
    frame[strip:-strip, strip:-strip] = False
    if fraction < MIN_FRACTION or fraction > MAX_FRACTION or foreground[frame].mean() >= fraction / 2:
        return whole
    return foreground.astype(bool)


def _separability(values: np.ndarray, threshold: float) -> float:
    """Otsu's criterion at `threshold`: between-class variance over total variance, in [0, 1]."""
    values = values.astype(np.float64)
    total = values.var()
    above = values > threshold
    share = above.mean()
    if total == 0 or share in (0.0, 1.0):
        return 0.0
    gap = values[above].mean() - values[~above].mean()
    return float(share * (1 - share) * gap * gap / total)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (holes inside the object)."""
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)  # the padding connects every border pixel to (0, 0)
    holes = flood[1:-1, 1:-1] == 0
    return mask | holes.astype(mask.dtype)
