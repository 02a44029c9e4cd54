"""Batched 2-D Perlin noise masks for simulated anomalies (DRAEM-style), drawn on any device in one pass.

DRAEM draws one noise image per call with a Python loop and rotates it with imgaug, which leaves the corners of the
rotated image empty. Here the whole batch is drawn at once: every sample gets its own grid resolution
(2**s per axis, s in [min_scale, max_scale)) and its own rotation, and the rotation is applied to the sampling
coordinates rather than to a finished noise image, so the noise is exact (no resampling) and covers the full image.
The gradient lattice is large enough to cover the rotated image, with an independent random gradient at every
lattice point, as in DRAEM's non-periodic noise.
"""
from __future__ import annotations

import math

import torch

from prn_lightning.config_checks import check_perlin
from prn_lightning.torch_threads import on_one_intra_op_thread

MAX_REDRAWS = 100
CPU_CHUNK_PIXELS = 2**16  # on CPU, one 256x256 image at a time: its temporaries stay in cache (16 % less than 4)


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3, evaluated as t * t * t * (t * (t * 6 - 15) + 10) with two
    allocations (in-place steps round exactly like the out-of-place expression)."""
    inner = (t * 6).sub_(15).mul_(t).add_(10)
    return (t * t).mul_(t).mul_(inner)


def perlin_noise(batch: int, height: int, width: int, *, min_scale: int, max_scale: int, rotation_deg: float,
                 generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Perlin noise (B, H, W) in about [-1, 1] (DRAEM's sqrt(2) scaling), per-sample resolution and rotation.

    All random numbers are drawn for the whole batch first, so the result does not depend on how the evaluation
    is chunked (whole batch on GPU, a few images at a time on CPU).
    """
    check_perlin(min_scale, max_scale, threshold=0.0, rotation=rotation_deg)
    device = torch.device(device)
    scales = torch.randint(min_scale, max_scale, (batch, 2), generator=generator, device=device)
    cells = (2 ** scales).to(torch.float32)  # (B, 2): lattice cells along y and x
    angle = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * math.radians(rotation_deg)

    # Lattice big enough for the rotated image: rotated coordinates stay within the half-diagonal of the centre.
    max_cells = 2 ** (max_scale - 1)
    half_diag = 0.5 * math.hypot(height - 1, width - 1)
    off_y = math.ceil(half_diag * max_cells / height) + 1
    off_x = math.ceil(half_diag * max_cells / width) + 1
    size_y = off_y + math.ceil(((height - 1) / 2 + half_diag) * max_cells / height) + 2
    size_x = off_x + math.ceil(((width - 1) / 2 + half_diag) * max_cells / width) + 2
    grad_angles = torch.rand(batch, size_y * size_x, generator=generator, device=device) * (2 * math.pi)
    grad_y, grad_x = torch.cos(grad_angles), torch.sin(grad_angles)  # unit gradients, one per lattice point

    cy, cx = (height - 1) / 2, (width - 1) / 2
    dy = (torch.arange(height, device=device, dtype=torch.float32) - cy).view(1, height, 1)
    dx = (torch.arange(width, device=device, dtype=torch.float32) - cx).view(1, 1, width)

    def evaluate(rows: slice) -> torch.Tensor:
        # In-place steps and shared temporaries: the same arithmetic, in the same order, as the textbook expression
        # (u = (cos dy - sin dx + cy) * cells / height, ...), with a fraction of the memory traffic.
        n = len(range(*rows.indices(batch)))
        cos, sin = torch.cos(angle[rows]).view(n, 1, 1), torch.sin(angle[rows]).view(n, 1, 1)
        u = (cos * dy - sin * dx).add_(cy).mul_((cells[rows, 0] / height).view(n, 1, 1))  # position in lattice cells
        v = (sin * dy + cos * dx).add_(cx).mul_((cells[rows, 1] / width).view(n, 1, 1))
        u0, v0 = torch.floor(u), torch.floor(v)
        fy, fx = u.sub_(u0), v.sub_(v0)
        base = u0.long().add_(off_y).mul_(size_x).add_(v0.long().add_(off_x)).view(n, -1)  # top-left corners
        gy_all, gx_all = grad_y[rows], grad_x[rows]
        fy1, fx1 = fy - 1, fx - 1

        def corner(step_y: int, step_x: int) -> torch.Tensor:
            # gy * (fy - step_y) + gx * (fx - step_x); gathering from the table shifted by the corner's offset
            # reads the same entries as offsetting every index.
            shift = step_y * size_x + step_x
            gy = gy_all[:, shift:].gather(1, base).view(n, height, width)
            gx = gx_all[:, shift:].gather(1, base).view(n, height, width)
            return gy.mul_(fy1 if step_y else fy).add_(gx.mul_(fx1 if step_x else fx))

        ty, tx = _fade(fy), _fade(fx)
        top = torch.lerp(corner(0, 0), corner(0, 1), tx)
        bottom = torch.lerp(corner(1, 0), corner(1, 1), tx)
        return torch.lerp(top, bottom, ty).mul_(math.sqrt(2))

    chunk = batch if device.type != "cpu" else max(1, CPU_CHUNK_PIXELS // (height * width))
    if batch == 0:
        return torch.zeros(0, height, width, device=device)
    return torch.cat([evaluate(slice(start, start + chunk)) for start in range(0, batch, chunk)])


@on_one_intra_op_thread
def perlin_masks(batch: int, height: int, width: int, *, min_scale: int, max_scale: int, threshold: float,
                 rotation_deg: float, generator: torch.Generator, device: torch.device | str,
                 min_threshold: float | None = None) -> torch.Tensor:
    """Binary anomaly masks (B, 1, H, W) float in {0, 1}: thresholded Perlin noise, never empty.

    With `min_threshold` below `threshold`, each mask gets its own threshold drawn uniformly in [min_threshold,
    threshold] (a lower threshold covers more of the image: at the defaults' scales a median 5.5 % at 0.5, 38 % at
    0.1), drawn before the noise; without it every mask uses `threshold` and no extra number is drawn (DRAEM).
    Empty masks (likely at coarse resolutions) are re-drawn, only the empty ones, with fresh scales and angles and
    their own thresholds.
    """
    check_perlin(min_scale, max_scale, threshold, rotation_deg, min_threshold)
    kwargs = dict(min_scale=min_scale, max_scale=max_scale, rotation_deg=rotation_deg, generator=generator,
                  device=device)
    cut = torch.full((batch, 1, 1), threshold, device=device)  # each mask's threshold
    if min_threshold is not None and min_threshold < threshold:
        draws = torch.rand(batch, generator=generator, device=device)
        cut = (min_threshold + draws * (threshold - min_threshold)).view(batch, 1, 1)
    masks = (perlin_noise(batch, height, width, **kwargs) > cut).to(torch.float32)
    for _ in range(MAX_REDRAWS):
        empty = (masks.flatten(1).amax(dim=1) == 0).nonzero().flatten()
        if empty.numel() == 0:
            return masks.unsqueeze(1)
        masks[empty] = (perlin_noise(empty.numel(), height, width, **kwargs) > cut[empty]).to(torch.float32)
    raise ValueError(f"Perlin masks stayed empty after {MAX_REDRAWS} draws with threshold={threshold} "
                     f"(data.perlin.threshold) at {height}x{width}; lower the threshold")
