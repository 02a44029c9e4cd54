"""Input checks shared by the evaluation metrics.

Evaluation must be exact, so malformed inputs (soft masks, NaN scores, mismatched shapes) are refused with one clear
`MetricInputError` instead of silently producing a plausible but wrong number.
"""
from __future__ import annotations

import torch
from torch import Tensor


class MetricInputError(ValueError):
    """Inputs a metric cannot evaluate exactly; the message names the argument and how to fix it."""


def _describe(x: Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}"


def as_image_batch(x: Tensor, name: str) -> Tensor:
    """(B, H, W) view of a batch of maps or masks; (B, 1, H, W) is accepted and squeezed."""
    if not isinstance(x, Tensor):
        raise MetricInputError(f"`{name}` must be a torch.Tensor of shape (B, H, W), got {type(x).__name__}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise MetricInputError(f"`{name}` must have shape (B, H, W) or (B, 1, H, W), got {_describe(x)}")
    return x


def check_scores(scores: Tensor, name: str) -> Tensor:
    """Floating scores without NaN; half precision is widened to float32 (monotone, so rankings are unchanged)."""
    if not scores.is_floating_point():
        raise MetricInputError(f"`{name}` must be a floating-point tensor of scores, got {_describe(scores)}")
    if torch.isnan(scores).any():
        raise MetricInputError(f"`{name}` contains NaN; anomaly scores must be finite numbers or +/-inf")
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores


def check_binary(labels: Tensor, name: str) -> Tensor:
    """Labels or mask pixels as bool; anything other than 0/1 (e.g. a bilinearly resized mask) is refused."""
    if labels.dtype == torch.bool:
        return labels
    binary = labels != 0
    if not (labels[binary] == 1).all():
        raise MetricInputError(
            f"`{name}` must contain only 0 and 1, got values such as {labels[binary & (labels != 1)][:3].tolist()}; "
            "binarise it (resize masks with nearest-neighbour interpolation)"
        )
    return binary


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Same shape and same device (states of one metric are concatenated and compared at compute time)."""
    if a.shape != b.shape:
        raise MetricInputError(f"`{name_a}` {_describe(a)} and `{name_b}` {_describe(b)} must have the same shape")
    if a.device != b.device:
        raise MetricInputError(f"`{name_a}` is on {a.device} but `{name_b}` on {b.device}; move both to one device")


def check_vector(x: Tensor, name: str) -> Tensor:
    """A (B,) tensor; (B, 1) is accepted and flattened."""
    if not isinstance(x, Tensor):
        raise MetricInputError(f"`{name}` must be a torch.Tensor of shape (B,), got {type(x).__name__}")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise MetricInputError(f"`{name}` must have shape (B,), got {_describe(x)}")
    return x
