"""Seeded albumentations pipelines: seen anomalies (image and mask together) and anomaly sources (image only).

PRN matches a whole feature map against whole-map prototypes, so a seen anomaly used as a whole image must stay
pixel-registered with the normal images: a flipped or turned image lines up with no prototype, and every pixel of it
that is labelled normal then carries a large residual (the model learns that large residuals are normal). Hence
two settings: `data.seen_augmentation` for whole seen images (default photometric: colour only, no pixel moves) and
`data.extended_defect_augmentation` for the seen defect that extended anomalies cut out and paste elsewhere (default
geometric: the defect moves anyway, so flips, turns and a small affine add variety without breaking registration).

Anomaly sources of simulated anomalies get DRAEM's random photometric augmenters: `per_source` ops drawn without
replacement from a configurable list (`data.source_augmentation`).

Every call takes a seed, so a training sample is a pure function of (seed, epoch, index) whatever worker draws it.
albumentations 2's `Compose.set_random_seed` hands the SAME seed to every transform, which correlates their random
choices (both flips always fire together); `seed_pipeline` gives each transform its own seed instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np

from prn_lightning.config_checks import (
    DEFECT_AUGMENTATIONS,
    GEOMETRIC_SOURCE_OPS,
    SOURCE_AUGMENTATION_OPS,
    check_source_augmentation,
)
from prn_lightning.errors import ConfigError


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed `pipeline` and give each of its transforms an independent seed derived from `seed`."""
    pipeline.set_random_seed(seed)
    children = np.random.SeedSequence(seed).generate_state(len(pipeline.transforms))
    for transform, child in zip(pipeline.transforms, children):
        transform.set_random_seed(int(child))


def defect_augmentation(mode: str, key: str = "data.seen_augmentation", square: bool = True) -> A.Compose | None:
    """The pipeline of a seen anomaly (image and mask) for `mode`; `key` names the config value in errors.

    photometric: colour jitter on the image only; image and mask stay where they are (pixel-registered).
    geometric:   flips, 90-degree turns (only for `square` images: a turn would change a non-square image's shape;
                 the two flips together still give the 180-degree turn) and a small affine scale/rotation (image and
                 mask), then the colour jitter.
    none:        no augmentation (None).
    """
    if mode not in DEFECT_AUGMENTATIONS:
        raise ConfigError(f"{key}={mode} is not a seen-anomaly augmentation; choose one of "
                          f"{', '.join(DEFECT_AUGMENTATIONS)}")
    if mode == "none":
        return None
    colour = A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.7)
    if mode == "photometric":
        return A.Compose([colour])
    turns = [A.RandomRotate90(p=0.5)] if square else []
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        *turns,
        A.Affine(scale=(0.8, 1.2), keep_ratio=True, rotate=(-15, 15), interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        colour,
    ])


def augment_defect(pipeline: A.Compose | None, image: np.ndarray, mask: np.ndarray,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply `pipeline` (from `defect_augmentation`; None = unchanged) to an RGB uint8 image and {0,1} mask."""
    if pipeline is None:
        return image, mask
    seed_pipeline(pipeline, seed)
    out = pipeline(image=image, mask=mask)
    return out["image"], out["mask"]


def source_augmentation() -> A.Compose:
    """Anomaly source from a normal image (no texture folder; the crop is already turned): flips and a strong colour
    change, so it differs visibly from the image it is blended into. Keeps the image's shape."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.6, hue=0.5, p=1.0),
        A.InvertImg(p=0.3),
    ])


def augment_source(pipeline: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply `pipeline` (from `source_augmentation`) to an RGB uint8 image."""
    seed_pipeline(pipeline, seed)
    return pipeline(image=image)["image"]


# DRAEM's anomaly-source augmenters (imgaug there), as albumentations transforms that always fire when drawn; the
# names are config_checks.SOURCE_AUGMENTATION_OPS (the allowed values of data.source_augmentation.ops), in order.
SOURCE_OPS: dict[str, Callable[[], A.BasicTransform]] = {
    "gamma": lambda: A.RandomGamma(gamma_limit=(50, 200), p=1.0),  # GammaContrast((0.5, 2.0))
    "brightness_contrast": lambda: A.RandomBrightnessContrast(  # MultiplyAndAddToBrightness(0.8-1.2, -30..30)
        brightness_limit=(-30 / 255, 30 / 255), contrast_limit=(-0.2, 0.2), p=1.0),
    "sharpness": lambda: A.Sharpen(alpha=(0.2, 1.0), lightness=(0.8, 1.2), p=1.0),  # pillike.EnhanceSharpness
    "hue_saturation": lambda: A.HueSaturationValue(  # AddToHueAndSaturation((-50, 50))
        hue_shift_limit=35, sat_shift_limit=50, val_shift_limit=0, p=1.0),
    "solarize": lambda: A.Solarize(threshold_range=(32 / 255, 128 / 255), p=1.0),  # Solarize(threshold 32-128)
    "posterize": lambda: A.Posterize(num_bits=(1, 7), p=1.0),  # Posterize()
    "invert": lambda: A.InvertImg(p=1.0),  # Invert()
    "autocontrast": lambda: A.AutoContrast(p=1.0),  # pillike.Autocontrast()
    "equalize": lambda: A.Equalize(p=1.0),  # pillike.Equalize()
    "rotate": lambda: A.Affine(rotate=(-45, 45), interpolation=cv2.INTER_LINEAR,  # Affine(rotate=(-45, 45))
                               border_mode=cv2.BORDER_REFLECT_101, p=1.0),
}


class SourceAugmentation:
    """DRAEM's random augmenter for anomaly sources: `per_source` of `ops` drawn without replacement, in drawn order.

    `ops` name entries of SOURCE_OPS (`data.source_augmentation.ops`); `per_source` = 0 switches it off.
    """

    def __init__(self, ops: Sequence[str] = SOURCE_AUGMENTATION_OPS, per_source: int = 3) -> None:
        ops = list(ops)
        check_source_augmentation(ops, per_source)
        self.ops = ops
        self.per_source = int(per_source)
        self._transforms = [SOURCE_OPS[op]() for op in ops]

    def photometric(self) -> SourceAugmentation:
        """The same augmenter without the ops that move pixels, drawing at most as many ops as remain."""
        ops = [op for op in self.ops if op not in GEOMETRIC_SOURCE_OPS]
        return SourceAugmentation(ops, min(self.per_source, len(ops)))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The RGB uint8 `image` after `per_source` random ops, chosen and seeded by `rng`."""
        if self.per_source == 0:
            return image
        chosen = rng.choice(len(self._transforms), size=self.per_source, replace=False)
        seeds = rng.integers(2**31, size=self.per_source)
        for index, seed in zip(chosen, seeds):
            transform = self._transforms[int(index)]
            transform.set_random_seed(int(seed))
            image = transform(image=image)["image"]
        return image
