"""From logits to what evaluation consumes: per-pixel anomaly maps and one score per image."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kernel1d(sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian of size 2 * ceil(4 * sigma) + 1 (anomalib's choice)."""
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of (B, H, W) maps with reflected borders (a constant map stays constant)."""
    kernel = gaussian_kernel1d(sigma, maps.device, maps.dtype)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    # Reflection needs padding < size; larger kernels fall back to replicated borders.
    mode = "reflect" if radius < min(maps.shape[-2:]) else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def anomaly_map(logits: Tensor, sigma: float = 0.0) -> Tensor:
    """Per-pixel anomaly probability (B, H, W) from logits (B, 1, H, W), optionally Gaussian-smoothed (sigma > 0)."""
    maps = torch.sigmoid(logits.float()).squeeze(1)
    return gaussian_blur(maps, sigma) if sigma > 0 else maps


def image_score(maps: Tensor, topk: int = 100) -> Tensor:
    """Image anomaly score (B,): the mean of the `topk` highest pixel scores (k clamped to the number of pixels)."""
    if topk < 1:
        raise ValueError(f"model.topk={topk} must be >= 1")
    flat = maps.reshape(maps.shape[0], -1)
    return flat.topk(min(topk, flat.shape[1]), dim=1).values.mean(dim=1)
