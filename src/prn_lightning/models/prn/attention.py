"""Multi-size self-attention (MSA): attention among non-overlapping patches of several sizes.

At a map of height h, head s cuts the map into patches of size h / 2^s (h, h/2, h/4, h/8 for 4 sizes: 1, 4, 16, 64
tokens), each patch flattened to one token of dimension D = patch_h x patch_w x c. Patches then attend to each other
(softmax(Q K^T / D) V, D being the token dimension, as in the paper and its re-implementation), which lets an
anomalous region be compared with the normal context around it at several extents.

Cost: Q, K and V come from one 1x1 conv of the map shared by the heads (the same linear map at every pixel of a
patch, so its size does not grow with the patch), and the reduction uses a 1x1 conv plus a depthwise 3x3 conv. A
block then holds about 7 c^2 weights (c = its channels): per-head projections and a dense 3x3 reduction would hold
25 c^2, which for wide_resnet50_2 (c = 2048 at stage 3) means over 400 M parameters.

Speed: cutting a map into patch tokens copies Q, K and V once per head, and putting the outputs back once more.
When the map divides into the smallest patches, a block instead puts its pixels once in quadtree order with the
channels last (quadrant by quadrant, recursively), where every patch of every size is a run of consecutive values:
each head's tokens are views, and the per-pixel Q/K/V projection and reduction conv are single matrix products.
BatchNorm and the depthwise conv run in image order (BatchNorm's channels-last statistics would be less accurate).
The same arithmetic up to float rounding (~3e-7), 10-30 % less time per block, fwd + bwd, on CPU.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prn_lightning.config_checks import MSA_LOGIT_SCALES


def patch_sizes(height: int, width: int, num_sizes: int) -> list[tuple[int, int]]:
    """Patch size per head: (h / 2^s, w / 2^s), floored and clamped to >= 1 for small maps."""
    return [(max(1, height >> s), max(1, width >> s)) for s in range(num_sizes)]


def logit_scale(token_dim: int, rule: str) -> float:
    """The factor on Q K^T for tokens of dimension `token_dim` under `model.msa_logit_scale` = `rule`."""
    if rule == "token_dim":
        return 1.0 / token_dim
    if rule == "sqrt_token_dim":
        return token_dim ** -0.5
    raise ValueError(f"model.msa_logit_scale={rule!r} must be one of {', '.join(MSA_LOGIT_SCALES)}")


def token_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(Q K^T * scale) V for tokens (B, n, D).

    When gradients are recorded (training) it is two batched matrix products around a softmax: with few tokens of
    thousands of dimensions they take about 25 % less time, fwd + bwd, than PyTorch's fused CPU kernel, which tiles
    for small head dimensions. Otherwise (evaluation, prediction, export) it is the fused operator, which exporters
    translate as before (OpenVINO fuses the plain MatMul-Softmax-MatMul pattern into a kernel that loses accuracy
    at these token sizes). Both compute the same values up to float rounding (~3e-7)."""
    if not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)).mul_(scale), dim=-1)
    return torch.bmm(weights, v)


def patch_tokens(qkv: Tensor, patch: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Q, K, V tokens (B, n, c * ph * pw) of the (ph, pw) patches of `qkv` (B, 3c, H, W), row-major over patches.

    A map that the patch size does not divide is zero-padded at the bottom/right first."""
    batch, channels3, height, width = qkv.shape
    channels = channels3 // 3
    ph, pw = patch
    pad_h, pad_w = (-height) % ph, (-width) % pw
    if pad_h or pad_w:
        qkv = F.pad(qkv, (0, pad_w, 0, pad_h))
    nh, nw = qkv.shape[-2] // ph, qkv.shape[-1] // pw
    tokens = (qkv.reshape(batch, 3, channels, nh, ph, nw, pw)
              .permute(1, 0, 3, 5, 2, 4, 6)
              .reshape(3, batch, nh * nw, channels * ph * pw))
    return tokens.unbind(0)


def patch_attention(qkv: Tensor, patch: tuple[int, int], scale_rule: str = "token_dim") -> Tensor:
    """Self-attention among the patches of `qkv` (B, 3c, H, W) -> (B, c, H, W).

    A map that the patch size does not divide is zero-padded at the bottom/right and cropped back afterwards.
    The head whose patch is the whole map has a single token and skips the attention arithmetic. `scale_rule` is a
    `model.msa_logit_scale` value.
    """
    batch, channels3, height, width = qkv.shape
    channels = channels3 // 3
    ph, pw = patch
    if ph >= height and pw >= width:  # one token: softmax over one key is 1, the output is V itself (exactly)
        return qkv[:, 2 * channels:]
    q, k, v = patch_tokens(qkv, patch)
    nh, nw = -(-height // ph), -(-width // pw)
    out = token_attention(q, k, v, logit_scale(q.shape[-1], scale_rule))
    out = (out.reshape(batch, nh, nw, channels, ph, pw)
           .permute(0, 3, 1, 4, 2, 5)
           .reshape(batch, channels, nh * ph, nw * pw))
    return out[:, :, :height, :width]


def to_quadtree(x: Tensor, levels: int) -> Tensor:
    """(B, c, H, W) -> (B, H*W, c): pixels in quadtree order over `levels` halvings (quadrant bits y1, x1, ...,
    y_levels, x_levels, then the leaf block of H / 2^levels x W / 2^levels row by row), channels last."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, *[2] * levels, height >> levels, *[2] * levels, width >> levels)
    order = [0, *[d for i in range(levels) for d in (2 + i, 3 + levels + i)], 2 + levels, 3 + 2 * levels, 1]
    return x.permute(order).reshape(batch, height * width, channels)


def from_quadtree(x: Tensor, levels: int, height: int, width: int) -> Tensor:
    """Inverse of `to_quadtree`: (B, H*W, c) -> (B, c, H, W)."""
    batch, _, channels = x.shape
    x = x.reshape(batch, *[2, 2] * levels, height >> levels, width >> levels, channels)
    order = [0, 3 + 2 * levels, *[1 + 2 * i for i in range(levels)], 1 + 2 * levels,
             *[2 + 2 * i for i in range(levels)], 2 + 2 * levels]
    return x.permute(order).reshape(batch, channels, height, width)


class MultiSizeAttentionBlock(nn.Module):
    """One MSA block: a head per patch size, outputs concatenated and reduced back by a residual conv block.

    out = ReLU(x + BN(depthwise_conv3x3(ReLU(BN(conv1x1(concat(heads)))))))
    """

    def __init__(self, channels: int, num_sizes: int = 4, scale_rule: str = "token_dim") -> None:
        super().__init__()
        logit_scale(1, scale_rule)  # a wrong value fails here, when the network is built
        self.num_sizes = num_sizes
        self.scale_rule = scale_rule
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels * num_sizes, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        levels = self.num_sizes - 1
        divides = x.shape[-2] % (1 << levels) == 0 and x.shape[-1] % (1 << levels) == 0
        mixed = self.mixed_heads(x) if divides else self.mixed_heads_by_patches(x)
        return torch.relu(x + self.reduce[1:](mixed))

    def mixed_heads_by_patches(self, x: Tensor) -> Tensor:
        """conv1x1(concat(heads)) with patch tokens (any map size)."""
        qkv = self.qkv(x)
        heads = [patch_attention(qkv, size, self.scale_rule)
                 for size in patch_sizes(x.shape[-2], x.shape[-1], self.num_sizes)]
        return self.reduce[0](torch.cat(heads, dim=1))

    def mixed_heads(self, x: Tensor) -> Tensor:
        """conv1x1(concat(heads)) computed in quadtree pixel order; H and W must divide by 2^(num_sizes - 1)."""
        batch, channels, height, width = x.shape
        levels = self.num_sizes - 1
        pixels = to_quadtree(x, levels).reshape(batch * height * width, channels)
        weight, bias = self.qkv.weight.view(3, channels, channels), self.qkv.bias.view(3, channels)
        q, k, v = (F.linear(pixels, weight[i], bias[i]).view(batch, height * width, channels) for i in range(3))
        heads = []
        for s in range(self.num_sizes):  # head s: 4^s tokens, each a run of consecutive pixels (all channels)
            tokens = 4**s
            if tokens == 1:  # one token: softmax over one key is 1, the output is V itself (exactly)
                heads.append(v)
                continue
            q_s, k_s, v_s = (t.view(batch, tokens, -1) for t in (q, k, v))
            out = token_attention(q_s, k_s, v_s, logit_scale(q_s.shape[-1], self.scale_rule))
            heads.append(out.view(batch, height * width, channels))
        mixed = F.linear(torch.cat(heads, dim=2), self.reduce[0].weight.flatten(1))
        return from_quadtree(mixed, levels, height, width)


class MultiSizeAttention(nn.Module):
    """`blocks` MSA blocks at each stage; stages are processed independently (fusion happens around MSA)."""

    def __init__(self, channels: Sequence[int], blocks: int = 3, num_sizes: int = 4,
                 scale_rule: str = "token_dim") -> None:
        super().__init__()
        if blocks < 1 or num_sizes < 1:
            raise ValueError(f"model.msa_blocks={blocks} and model.msa_sizes={num_sizes} must both be >= 1 "
                             "(switch MSA off with model.use_msa=false)")
        self.stages = nn.ModuleList(
            nn.Sequential(*[MultiSizeAttentionBlock(c, num_sizes, scale_rule) for _ in range(blocks)]) for c in channels
        )

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        return [stage(x) for stage, x in zip(self.stages, maps)]
