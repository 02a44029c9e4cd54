"""PRN's segmentation loss: SmoothL1(sigmoid(logits), M) + lambda * Focal(logits, M) [+ mu * Dice].

The Smooth-L1 term pulls every pixel's probability towards its mask value; the focal term concentrates on the
few hard pixels (small defects among many normal pixels). The optional soft-Dice term (weight 0 in the paper) scores
the overlap of the predicted and true defect regions as a whole, so a large region predicted at half strength
costs as much as a small one missed.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def binary_focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 4.0) -> Tensor:
    """Mean of -alpha_t (1 - p_t)^gamma log(p_t) over all pixels, computed from logits (no log(0) for any logit).

    p_t is the predicted probability of the true class; alpha_t = alpha for anomalous pixels, 1 - alpha for normal.
    """
    log_p_t = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # 1 - p_t = sigmoid(-logit) for target 1 and sigmoid(logit) for target 0: one sigmoid of the signed logit.
    one_minus_p_t = torch.sigmoid((1 - 2 * target) * logits)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (-alpha_t * one_minus_p_t.pow(gamma) * log_p_t).mean()


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - (2 sum(p m) + s) / (sum(p) + sum(m) + s) over the whole batch, p = sigmoid(logits).

    Summed over the batch (not per image), so a batch of normal images only pushes its predicted mass to zero
    instead of having no overlap to score; `smooth` keeps it finite and makes that push gentle for small masses.
    """
    probabilities = torch.sigmoid(logits)
    overlap = (probabilities * target).sum()
    return 1 - (2 * overlap + smooth) / (probabilities.sum() + target.sum() + smooth)


class PRNLoss(nn.Module):
    """`loss, parts = PRNLoss(...)(logits (B,1,H,W), mask (B,1,H,W) or (B,H,W) in {0,1})`.

    `parts` holds the unweighted terms (detached) for logging: {"smooth_l1": ..., "focal": ...}, and "dice" when
    its weight is above 0.
    """

    def __init__(self, smooth_l1_weight: float = 1.0, focal_weight: float = 5.0, focal_alpha: float = 0.5,
                 focal_gamma: float = 4.0, dice_weight: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"model.loss.focal_alpha={focal_alpha} must be in [0, 1]")
        if focal_gamma < 0 or smooth_l1_weight < 0 or focal_weight < 0 or dice_weight < 0:
            raise ValueError(
                f"model.loss weights and focal_gamma must be >= 0, got smooth_l1_weight={smooth_l1_weight}, "
                f"focal_weight={focal_weight}, focal_gamma={focal_gamma}, dice_weight={dice_weight}"
            )
        self.smooth_l1_weight = smooth_l1_weight
        self.focal_weight = focal_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.dice_weight = dice_weight

    @classmethod
    def from_config(cls, loss_cfg: Any) -> PRNLoss:
        """From the `model.loss` config section (a run config written before `dice_weight` existed has none: 0)."""
        return cls(
            smooth_l1_weight=float(loss_cfg.smooth_l1_weight),
            focal_weight=float(loss_cfg.focal_weight),
            focal_alpha=float(loss_cfg.focal_alpha),
            focal_gamma=float(loss_cfg.focal_gamma),
            dice_weight=float(loss_cfg.get("dice_weight", 0.0)),
        )

    def forward(self, logits: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if mask.dim() == logits.dim() - 1:
            mask = mask.unsqueeze(1)
        if mask.shape != logits.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)}")
        logits = logits.float()
        mask = mask.to(logits.dtype)
        smooth_l1 = F.smooth_l1_loss(torch.sigmoid(logits), mask)
        focal = binary_focal_loss(logits, mask, self.focal_alpha, self.focal_gamma)
        loss = self.smooth_l1_weight * smooth_l1 + self.focal_weight * focal
        parts = {"smooth_l1": smooth_l1.detach(), "focal": focal.detach()}
        if self.dice_weight > 0:
            dice = soft_dice_loss(logits, mask)
            loss = loss + self.dice_weight * dice
            parts["dice"] = dice.detach()
        return loss, parts

    def extra_repr(self) -> str:
        return (f"smooth_l1_weight={self.smooth_l1_weight}, focal_weight={self.focal_weight}, "
                f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, dice_weight={self.dice_weight}")
