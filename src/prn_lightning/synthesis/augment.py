"""Seeded albumentations pipelines: seen anomalies (image and mask together) and anomaly sources (image only).

Every call takes a seed, so a training sample is a pure function of (seed, epoch, index) whatever worker draws it.
albumentations 2's `Compose.set_random_seed` hands the SAME seed to every transform, which correlates their random
choices (both flips always fire together); `seed_pipeline` gives each transform its own seed instead.
"""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed `pipeline` and give each of its transforms an independent seed derived from `seed`."""
    pipeline.set_random_seed(seed)
    children = np.random.SeedSequence(seed).generate_state(len(pipeline.transforms))
    for transform, child in zip(pipeline.transforms, children):
        transform.set_random_seed(int(child))


def defect_augmentation() -> A.Compose:
    """Flips, 90-degree turns, a small affine scale/rotation (image and mask), colour jitter (image only)."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.8, 1.2), keep_ratio=True, rotate=(-15, 15), interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.7),
    ])


def source_augmentation() -> A.Compose:
    """Anomaly source from a normal image (no texture folder): strong colour change and rotation, so it differs
    visibly from the image it is blended into."""
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.6, hue=0.5, p=1.0),
        A.InvertImg(p=0.3),
    ])


def augment_defect(pipeline: A.Compose, image: np.ndarray, mask: np.ndarray,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply `pipeline` (from `defect_augmentation`) to a seen anomaly's RGB uint8 image and {0,1} mask."""
    seed_pipeline(pipeline, seed)
    out = pipeline(image=image, mask=mask)
    return out["image"], out["mask"]


def augment_source(pipeline: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply `pipeline` (from `source_augmentation`) to an RGB uint8 image."""
    seed_pipeline(pipeline, seed)
    return pipeline(image=image)["image"]
