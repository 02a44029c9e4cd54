"""Feature residuals against the nearest normal prototype, and the multi-scale fusion block.

Residual: D = (F - P*)^2 element-wise, P* the prototype nearest to F over the whole map (what the public
re-implementation uses; the paper writes D(F - P*)). It is large exactly where an image departs from normality.

Fusion: each stage receives every other stage resampled to its own resolution and summed, so that residuals of
several scales meet in one map (F*_j = f_1j(F_1) + f_2j(F_2) + f_3j(F_3)).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def prototype_residual(features: Tensor, prototypes: Tensor) -> Tensor:
    """D = (F - P*)^2 for features and their nearest prototypes of the same shape (B, c, h, w)."""
    return (features - prototypes).square()


class UpsamplePath(nn.Module):
    """Coarser stage -> finer stage: 1x1 conv to the target's channels, then bilinear upsampling.

    The same as upsampling first and convolving after (both are linear and bilinear weights sum to one), at a
    fraction of the cost because the conv runs at the coarse resolution.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.proj(x), size=size, mode="bilinear", align_corners=False)


class DownsamplePath(nn.Module):
    """Finer stage -> coarser stage: strided depthwise 3x3 convs (one per factor of two), then a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        steps = int(round(math.log2(factor)))
        if 2**steps != factor:
            raise ValueError(f"stage resolutions must differ by powers of two, got a factor of {factor}")
        self.down = nn.Sequential(*[
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
            for _ in range(steps)
        ])
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.proj(self.down(x))


class SameStagePath(nn.Module):
    """The stage's own map: a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.proj(x)


class MultiScaleFusion(nn.Module):
    """For every target stage j: BatchNorm(sum over source stages i of path_ij(x_i)); channels are kept per stage.

    `strides` are the stages' strides relative to the input (e.g. 4, 8, 16); they decide each path's direction and
    factor. The BatchNorm puts features and squared residuals, whose scales differ widely, on a common footing.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for target, (c_out, s_out) in enumerate(zip(channels, strides)):
            row = nn.ModuleList()
            for source, (c_in, s_in) in enumerate(zip(channels, strides)):
                if source == target:
                    row.append(SameStagePath(c_in, c_out))
                elif s_in > s_out:
                    row.append(UpsamplePath(c_in, c_out))
                else:
                    row.append(DownsamplePath(c_in, c_out, s_out // s_in))
            self.paths.append(row)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        fused = []
        for target, (row, norm) in enumerate(zip(self.paths, self.norms)):
            size = tuple(maps[target].shape[-2:])
            total = row[0](maps[0], size)
            for source in range(1, len(maps)):
                total = total + row[source](maps[source], size)
            fused.append(norm(total))
        return fused
