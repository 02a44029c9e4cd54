"""Torch datasets: the training mix of PRN's four sample kinds, and evaluation splits (validation, test, prototypes).

Training records carry only what the workers can prepare cheaply on CPU (images, seen masks, pasted defects,
texture crops); the batch-level part (Perlin masks, opacities, blending, normalisation) runs on the training device
in `PRNDataModule.on_after_batch_transfer`. Every random choice of a record comes from a generator seeded by
(seed, epoch, index), so a sample is the same whichever worker or rank produces it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from prn_lightning.data import seed_streams
from prn_lightning.data.image_cache import load_image, preload_images
from prn_lightning.data.sources.records import ANOMALOUS, Sample
from prn_lightning.imaging.tensors import image_hw, image_to_tensor, load_mask, mask_to_tensor, unpadded, unpadded_batch
from prn_lightning.synthesis.augment import augment_defect, defect_augmentation
from prn_lightning.synthesis.extended import place_defect
from prn_lightning.synthesis.foreground import estimate_foreground
from prn_lightning.synthesis.perlin import perlin_masks
from prn_lightning.synthesis.simulated import sample_beta, simulate_anomalies
from prn_lightning.synthesis.textures import TextureSource

AUGMENT_RETRIES = 3  # re-augment a seen defect whose mask the affine transform pushed out of the image


class SampleKind(IntEnum):
    """The `kind` of a training sample (paper: normal, seen, augmented/extended, simulated)."""

    NORMAL = 0
    SEEN = 1
    EXTENDED = 2
    SIMULATED = 3


@dataclass(frozen=True)
class EpochSchedule:
    """What each position of one epoch is: its kind, and which images it uses.

    primary: normal-image index (normal, extended target, simulated) or seen index (seen);
    secondary: seen index of an extended sample, else -1.
    """

    kinds: np.ndarray
    primary: np.ndarray
    secondary: np.ndarray


def kind_counts(total: int, anomaly_ratio: float, weights: dict[SampleKind, float]) -> dict[SampleKind, int]:
    """Exact per-epoch counts: round(total * anomaly_ratio) anomalies split by weight (largest remainder)."""
    anomalies = int(round(total * anomaly_ratio))
    counts = {SampleKind.NORMAL: total - anomalies}
    kinds = sorted(weights)
    weight_sum = sum(weights.values())
    shares = np.array([anomalies * weights[k] / weight_sum for k in kinds])
    floors = np.floor(shares).astype(int)
    order = np.argsort(-(shares - floors), kind="stable")
    floors[order[: anomalies - floors.sum()]] += 1
    counts.update({k: int(n) for k, n in zip(kinds, floors)})
    return counts


def _cycled_permutation(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """`count` indices of range(n): fresh permutations back to back, so each index recurs as evenly as possible."""
    if count == 0:
        return np.zeros(0, np.int64)
    reps = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


def anomaly_source(textures: TextureSource, rng: np.random.Generator, base_image: np.ndarray,
                   normals: Sequence[Sample], image_size: tuple[int, int], resize: str) -> np.ndarray:
    """The anomaly source of a simulated anomaly blended into `base_image`: from the texture folder, else from a
    random one of `normals` (or `base_image` recoloured in place, for `textures.in_place` of the draws)."""
    if textures.uses_textures:
        return textures.sample(rng, base_image=base_image)
    other = normals[int(rng.integers(len(normals)))]
    return textures.sample(rng, normal_image=load_image(other.image_path, image_size, resize=resize),
                           base_image=base_image)


class TrainMixDataset(Dataset):
    """One epoch of normal, seen, extended and simulated samples, indexed by (epoch, position).

    Each record holds "image" (3,H,W) float in [0,1], "mask" (1,H,W), "kind" and "source" (3,H,W):
    normal   -> the normal image, empty mask, zero source;
    seen     -> the seen anomaly and its mask after `seen_augmentation` (default photometric: still
                pixel-registered with the prototypes), zero source;
    extended -> a normal image, its placed defect content C (after `extended_augmentation`, default geometric)
                as source and C's mask;
    simulated-> a normal image, an anomaly-source crop as source, empty mask (Perlin mask drawn on the device).
    A plain integer index means epoch 0.
    """

    def __init__(self, normals: Sequence[Sample], seen: Sequence[Sample], *, image_size: int | Sequence[int],
                 samples_per_epoch: int, anomaly_ratio: float, weights: dict[SampleKind, float],
                 texture_source: TextureSource, estimate_objects: bool, seed: int, resize: str = "squash",
                 seen_augmentation: str = "photometric", extended_augmentation: str = "geometric") -> None:
        if not normals:
            raise ValueError("TrainMixDataset needs at least one normal training image")
        needs_seen = {SampleKind.SEEN, SampleKind.EXTENDED} & set(weights)
        if needs_seen and not seen:
            raise ValueError(f"generation strategies {sorted(k.name.lower() for k in needs_seen)} need seen anomalies")
        self.normals, self.seen = list(normals), list(seen)
        self.image_size = image_hw(image_size)
        self.resize = resize
        preload_images([s.image_path for s in self.normals + self.seen], self.image_size,  # read every epoch
                       resize=self.resize)
        self.samples_per_epoch = int(samples_per_epoch)
        self.counts = kind_counts(self.samples_per_epoch, anomaly_ratio, weights)
        self.texture_source = texture_source
        self.estimate_objects = estimate_objects
        self.seed = int(seed)
        square = self.image_size[0] == self.image_size[1]
        self._seen_augmentation = defect_augmentation(seen_augmentation, "data.seen_augmentation", square)
        self._extended_augmentation = defect_augmentation(extended_augmentation, "data.extended_defect_augmentation",
                                                          square)
        self._schedule: tuple[int, EpochSchedule] | None = None  # the last epoch's schedule (per worker)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def schedule(self, epoch: int) -> EpochSchedule:
        """The (shuffled) kinds of epoch `epoch` and the images each position uses; a pure function of the seed."""
        if self._schedule is None or self._schedule[0] != epoch:
            self._schedule = (epoch, self._build_schedule(epoch))
        return self._schedule[1]

    def _build_schedule(self, epoch: int) -> EpochSchedule:
        rng = np.random.default_rng([self.seed, seed_streams.SCHEDULE, epoch])
        kinds = np.concatenate([np.full(n, int(k), np.int64) for k, n in sorted(self.counts.items())])
        rng.shuffle(kinds)
        primary = np.zeros(len(kinds), np.int64)
        secondary = np.full(len(kinds), -1, np.int64)
        n_normals, n_seen = len(self.normals), len(self.seen)
        for kind in SampleKind:
            where = np.flatnonzero(kinds == kind)
            if kind == SampleKind.NORMAL:
                primary[where] = _cycled_permutation(rng, n_normals, where.size)
            elif kind == SampleKind.SEEN:
                primary[where] = _cycled_permutation(rng, n_seen, where.size)
            elif kind == SampleKind.EXTENDED:
                primary[where] = rng.integers(n_normals, size=where.size)
                secondary[where] = _cycled_permutation(rng, n_seen, where.size)
            else:
                primary[where] = rng.integers(n_normals, size=where.size)
        return EpochSchedule(kinds, primary, secondary)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, position = key if isinstance(key, tuple) else (0, key)
        if not 0 <= position < self.samples_per_epoch:
            raise IndexError(f"position {position} outside the epoch of {self.samples_per_epoch} samples")
        plan = self.schedule(int(epoch))
        kind = SampleKind(int(plan.kinds[position]))
        rng = np.random.default_rng([self.seed, seed_streams.SAMPLE, int(epoch), int(position)])
        source = np.zeros((*self.image_size, 3), np.uint8)
        if kind == SampleKind.SEEN:
            image, mask = self._augmented_seen(int(plan.primary[position]), rng, self._seen_augmentation)
        else:
            image = load_image(self.normals[int(plan.primary[position])].image_path, self.image_size,
                               resize=self.resize)
            mask = np.zeros(self.image_size, np.uint8)
            if kind == SampleKind.EXTENDED:
                defect, defect_mask = self._augmented_seen(int(plan.secondary[position]), rng,
                                                           self._extended_augmentation)
                foreground = (estimate_foreground(image) if self.estimate_objects
                              else np.ones(self.image_size, bool))
                if self.resize == "keep-aspect":  # on the image, never on its padding
                    foreground &= unpadded(image)
                source, mask = place_defect(defect, defect_mask, foreground, rng)
                if self.resize == "keep-aspect":
                    mask *= foreground.astype(mask.dtype)
                    source *= foreground[..., None].astype(source.dtype)
            elif kind == SampleKind.SIMULATED:
                source = anomaly_source(self.texture_source, rng, image, self.normals, self.image_size, self.resize)
        return {"image": image_to_tensor(image), "mask": mask_to_tensor(mask), "kind": int(kind),
                "source": image_to_tensor(source)}

    def _augmented_seen(self, index: int, rng: np.random.Generator,
                        pipeline: A.Compose | None) -> tuple[np.ndarray, np.ndarray]:
        sample = self.seen[index]
        image = load_image(sample.image_path, self.image_size, resize=self.resize)
        mask = load_mask(sample.mask_path, self.image_size, self.resize)
        for _ in range(AUGMENT_RETRIES):
            out_image, out_mask = augment_defect(pipeline, image, mask, int(rng.integers(2**31)))
            if out_mask.any() or not mask.any():
                return out_image, out_mask
        return image, mask  # the defect keeps leaving the frame: use it unaugmented


class EvalDataset(Dataset):
    """Evaluation records: "image" (3,H,W) in [0,1] (the network normalises it), "mask" (1,H,W), "label",
    "defect_id" (-1 for normal and simulated, else index in `defect_types`), "image_path", "index".

    With `simulated_per_sample` > 0 (validation), the samples (held-out normals, and any real validation anomalies)
    are followed by that many simulated anomalies per normal sample, each fixed by its index (CPU generator seeded by
    (seed, index)): the same every epoch. A simulated record carries its base normal's image_path, label 1 and
    defect_id -1 (no real defect type).
    """

    def __init__(self, samples: Sequence[Sample], image_size: int | Sequence[int], defect_types: Sequence[str] = (),
                 *, resize: str = "squash", simulated_per_sample: int = 0, texture_source: TextureSource | None = None,
                 perlin: dict | None = None, beta_range: tuple[float, float] = (0.0, 0.8), seed: int = 0) -> None:
        if simulated_per_sample and (texture_source is None or perlin is None):
            raise ValueError("EvalDataset with simulated anomalies needs a texture_source and perlin settings")
        self.samples = list(samples)
        self.normals = [s for s in self.samples if s.label != ANOMALOUS]  # the bases of simulated anomalies
        self.image_size = image_hw(image_size)
        self.resize = resize
        self.defect_ids = {name: i for i, name in enumerate(defect_types)}
        self.simulated_per_sample = int(simulated_per_sample)
        self.texture_source = texture_source
        self.perlin = dict(perlin or {})
        self.beta_range = tuple(beta_range)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.samples) + len(self.normals) * self.simulated_per_sample

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside the {len(self)} evaluation samples")
        real = index < len(self.samples)
        sample = self.samples[index] if real else self.normals[(index - len(self.samples)) % len(self.normals)]
        pixels = load_image(sample.image_path, self.image_size, resize=self.resize)
        image = image_to_tensor(pixels)
        if real:
            mask = mask_to_tensor(load_mask(sample.mask_path, self.image_size, self.resize))
            label = int(sample.label)
            defect_id = self.defect_ids[sample.defect_type] if label == ANOMALOUS else -1
        else:  # seeded as if only the normals came first: real validation anomalies leave these draws unchanged
            image, mask = self._simulated(image, pixels, index - len(self.samples) + len(self.normals))
            label, defect_id = ANOMALOUS, -1
        return {"image": image, "mask": mask, "label": label, "defect_id": defect_id,
                "image_path": str(sample.image_path), "index": index}

    def _simulated(self, image: torch.Tensor, pixels: np.ndarray, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, seed_streams.VALIDATION, index])
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        mask = perlin_masks(1, *self.image_size, generator=generator, device="cpu", **self.perlin)
        if self.resize == "keep-aspect":  # on the image, never on its padding (redrawn if it fell there)
            inside = unpadded_batch(image[None])
            mask *= inside
            while not mask.any():
                mask = inside * perlin_masks(1, *self.image_size, generator=generator, device="cpu", **self.perlin)
        beta = sample_beta(1, self.beta_range, generator=generator, device="cpu")
        source = anomaly_source(self.texture_source, rng, pixels, self.normals, self.image_size, self.resize)
        blended = simulate_anomalies(image[None], image_to_tensor(source)[None], mask, beta)
        return blended[0], mask[0]
