"""Simulated anomalies (DRAEM-style): an anomaly-source image shown through a Perlin mask onto a normal image.

S = (1 - M) * N + (1 - beta) * (M * A) + beta * (M * N), on images in [0, 1] before ImageNet normalisation.
beta is the opacity of the normal image inside the mask: beta = 0 pastes the source, beta near 1 leaves a faint trace.
"""
from __future__ import annotations

import torch

from prn_lightning.config_checks import check_beta
from prn_lightning.torch_threads import on_one_intra_op_thread

CPU_CHUNK_VALUES = 1 << 18  # ~4 RGB images of 128 px or one of 256 px per step on CPU


def sample_beta(batch: int, beta_range: tuple[float, float], *, generator: torch.Generator,
                device: torch.device | str) -> torch.Tensor:
    """Opacities (B, 1, 1, 1) drawn uniformly in [low, high) (data.beta), ready to broadcast over images."""
    check_beta(list(beta_range))
    low, high = float(beta_range[0]), float(beta_range[1])
    beta = torch.rand(batch, 1, 1, 1, generator=generator, device=device)
    return low + (high - low) * beta


@on_one_intra_op_thread
def simulate_anomalies(normal: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                       beta: torch.Tensor) -> torch.Tensor:
    """S = (1 - M) * N + (1 - beta) * (M * A) + beta * (M * N) for normal N (B,3,H,W), source A (B,3,H,W),
    mask M (B,1,H,W) in {0, 1} and beta (B,1,1,1).

    With M exactly 0 or 1 the formula is N outside the mask and (1 - beta) * A + beta * N inside, bit for bit (the
    other terms are exact zeros), so it is computed as that choice: three passes over the images instead of nine.
    On CPU it runs a few images at a time so that the temporaries stay in cache (2x less time than whole batches).
    """
    chunk = normal.shape[0] if normal.device.type != "cpu" else max(1, CPU_CHUNK_VALUES // normal[0].numel())
    if normal.shape[0] <= chunk:
        return _blend(normal, source, mask, beta)
    return torch.cat([_blend(normal[i:i + chunk], source[i:i + chunk], mask[i:i + chunk], beta[i:i + chunk])
                      for i in range(0, normal.shape[0], chunk)])


def _blend(normal: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    inside = (source * (1 - beta)).add_(normal * beta)
    return torch.where(mask.bool(), inside, normal)
