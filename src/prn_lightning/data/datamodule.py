"""PRNDataModule: the `data` config section -> training, validation, test and prototype loaders.

setup() loads the category, moves the seen anomalies from test to train (writing their list into the run
directory), holds out `val_fraction` of train/good for validation, and builds the datasets. Workers prepare images
on CPU; `on_after_batch_transfer` completes training batches on their device (Perlin masks, opacities, the
extended/simulated formulas, labels). Images stay in [0, 1]: the network normalises its own input.

Reproducibility: every training sample is a function of (seed, epoch, position), every validation anomaly of
(seed, index), and each device-side batch draw of (seed, epoch, batch number, rank); results do not depend on the
number of workers. The Trainer must run with `use_distributed_sampler=False`: this module builds its own samplers
(an epoch-schedule split for training, an unrepeated one for evaluation, so metrics are exact in DDP).
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from prn_lightning.data import seed_streams
from prn_lightning.data.datasets import EvalDataset, SampleKind, TrainMixDataset
from prn_lightning.data.samplers import EpochScheduleSampler, UnrepeatedDistributedSampler, world_size_and_rank
from prn_lightning.data.seen import split_seen, write_seen_list
from prn_lightning.data.sources.records import Sample
from prn_lightning.data.sources.registry import load_category
from prn_lightning.errors import ConfigError
from prn_lightning.synthesis.extended import extend_anomalies
from prn_lightning.synthesis.perlin import perlin_masks
from prn_lightning.synthesis.simulated import sample_beta, simulate_anomalies
from prn_lightning.synthesis.textures import TextureSource, resolve_texture_dir

FOREGROUND_MODES = ("auto", "texture", "object")


def seed_worker(worker_id: int) -> None:
    """Seed numpy/random from torch's per-worker seed (new each epoch unless workers persist).

    cv2's thread count is deliberately left alone: `cv2.setNumThreads` in a forked worker deadlocks once the parent
    process has used cv2's thread pool (seen with opencv-python-headless 5.0)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def hold_out(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training normals, validation normals): a seeded `fraction` of train/good, at least one of each when > 0."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * len(train)))
    if fraction > 0:
        n_val = max(n_val, 1)
    if len(train) - n_val < 1:
        raise ConfigError(f"data.val_fraction={fraction} leaves no training image out of {len(train)} in "
                          "train/good; lower data.val_fraction")
    chosen = set(np.random.default_rng([seed, seed_streams.HOLDOUT]).permutation(len(train))[:n_val].tolist())
    return ([s for i, s in enumerate(train) if i not in chosen], [s for i, s in enumerate(train) if i in chosen])


def generation_weights(generation: Mapping, num_seen: int) -> dict[SampleKind, float]:
    """Weights of the enabled anomaly strategies (data.generation.*); seen/extended need seen anomalies."""
    weights = {}
    for kind in (SampleKind.SEEN, SampleKind.EXTENDED, SampleKind.SIMULATED):
        name = kind.name.lower()
        weight = float(generation[f"{name}_weight"])
        if weight < 0:
            raise ConfigError(f"data.generation.{name}_weight must be >= 0, got {weight}")
        if bool(generation[name]) and weight > 0 and (kind == SampleKind.SIMULATED or num_seen > 0):
            weights[kind] = weight
    if not weights:
        raise ConfigError("data.generation enables no anomaly strategy that can run: PRN trains on anomalies; "
                          "enable data.generation.simulated, or seen/extended with data.num_seen_anomalies > 0 "
                          f"(now {num_seen}), each with a positive weight")
    return weights


def perlin_settings(perlin: Mapping) -> dict[str, Any]:
    """data.perlin -> keyword arguments of `perlin_masks` (checked here, so a bad value fails in setup)."""
    settings = dict(min_scale=int(perlin["min_scale"]), max_scale=int(perlin["max_scale"]),
                    threshold=float(perlin["threshold"]), rotation_deg=float(perlin["rotation"]))
    if not 0 <= settings["min_scale"] < settings["max_scale"]:
        raise ConfigError("data.perlin needs 0 <= min_scale < max_scale, got "
                          f"min_scale={settings['min_scale']}, max_scale={settings['max_scale']}")
    if not -1.0 < settings["threshold"] < 1.0:
        raise ConfigError(f"data.perlin.threshold must be in (-1, 1) (Perlin noise lies in [-1, 1]), "
                          f"got {settings['threshold']}")
    return settings


class PRNDataModule(pl.LightningDataModule):
    """Loaders for PRN; see the module docstring. `data_cfg` is the `data` section of the config."""

    def __init__(self, data_cfg: DictConfig | Mapping, seed: int, run_dir: str | Path | None = None) -> None:
        super().__init__()
        self.cfg = data_cfg if isinstance(data_cfg, DictConfig) else OmegaConf.create(dict(data_cfg))
        self.seed = int(seed) % 2**63
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.splits = None
        self.seen_anomalies: list[Sample] = []
        self.test_samples: list[Sample] = []
        self.val_samples: list[Sample] = []
        self.train_normals: list[Sample] = []
        self.defect_types: list[str] = []
        self.train_sampler: EpochScheduleSampler | None = None
        self._batch_counter = (0, 0)  # (epoch, training batches completed in it): seeds the device-side draws

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        cfg = self.cfg
        self.image_size = int(cfg.image_size)
        if self.image_size < 8:
            raise ConfigError(f"data.image_size must be at least 8, got {self.image_size}")
        self.perlin = perlin_settings(cfg.perlin)
        self.beta_range = (float(cfg.beta[0]), float(cfg.beta[1]))
        if not 0.0 <= self.beta_range[0] <= self.beta_range[1] <= 1.0:
            raise ConfigError(f"data.beta must be [low, high] with 0 <= low <= high <= 1, got {list(cfg.beta)}")
        if cfg.foreground not in FOREGROUND_MODES:
            raise ConfigError(f"data.foreground must be one of {', '.join(FOREGROUND_MODES)}, got {cfg.foreground}")
        anomaly_ratio = float(cfg.anomaly_ratio)
        if not 0.0 < anomaly_ratio <= 1.0:
            raise ConfigError(f"data.anomaly_ratio must be in (0, 1], got {anomaly_ratio}: PRN trains on anomalies")
        per_normal = int(cfg.val_synthetic_per_normal)
        if per_normal < 0:
            raise ConfigError(f"data.val_synthetic_per_normal must be >= 0, got {per_normal}")

        self.splits = load_category(cfg)
        self.seen_anomalies, self.test_samples = split_seen(self.splits, int(cfg.num_seen_anomalies), self.seed)
        self.defect_types = self.splits.defect_types
        self.train_normals, self.val_samples = hold_out(self.splits.train, float(cfg.val_fraction), self.seed)
        weights = generation_weights(cfg.generation, len(self.seen_anomalies))
        self.samples_per_epoch = self._samples_per_epoch(anomaly_ratio)
        if self.run_dir is not None and world_size_and_rank()[1] == 0:
            write_seen_list(self.run_dir / "seen_anomalies.txt", self.seen_anomalies)

        textures = TextureSource(resolve_texture_dir(cfg.texture_dir, cfg.root), self.image_size)
        estimate_objects = cfg.foreground == "object" or (cfg.foreground == "auto" and not self.splits.is_texture)
        self.train_dataset = TrainMixDataset(
            self.train_normals, self.seen_anomalies, image_size=self.image_size,
            samples_per_epoch=self.samples_per_epoch, anomaly_ratio=anomaly_ratio, weights=weights,
            texture_source=textures, estimate_objects=estimate_objects, seed=self.seed)
        self.val_dataset = EvalDataset(self.val_samples, self.image_size, simulated_per_sample=per_normal,
                                       texture_source=textures, perlin=self.perlin, beta_range=self.beta_range,
                                       seed=self.seed)
        self.test_dataset = EvalDataset(self.test_samples, self.image_size, self.defect_types)
        self.prototype_dataset = EvalDataset(self.train_normals, self.image_size)

    def _samples_per_epoch(self, anomaly_ratio: float) -> int:
        value = self.cfg.samples_per_epoch
        if value is None:
            if anomaly_ratio >= 1.0:
                raise ConfigError("data.samples_per_epoch must be set when data.anomaly_ratio is 1 "
                                  "(the default derives it from the normal images of an epoch)")
            return max(1, round(len(self.train_normals) / (1.0 - anomaly_ratio)))
        if int(value) < 1:
            raise ConfigError(f"data.samples_per_epoch must be a positive integer or null, got {value}")
        return int(value)

    # ------------------------------------------------------------------------------------------------ loaders
    def _loader(self, dataset, batch_size: int, sampler, rank: int) -> DataLoader:
        workers = int(self.cfg.num_workers)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                          persistent_workers=workers > 0, worker_init_fn=seed_worker,
                          generator=torch.Generator().manual_seed(
                              int(np.random.SeedSequence([self.seed, seed_streams.LOADER, rank]).generate_state(1)[0])),
                          pin_memory=torch.cuda.is_available())

    def _eval_loader(self, dataset: EvalDataset) -> DataLoader:
        world, rank = world_size_and_rank()
        sampler = UnrepeatedDistributedSampler(len(dataset), world, rank) if world > 1 else None
        return self._loader(dataset, int(self.cfg.eval_batch_size), sampler, rank)

    def train_dataloader(self) -> DataLoader:
        world, rank = world_size_and_rank()
        self.train_sampler = EpochScheduleSampler(len(self.train_dataset), world, rank)
        return self._loader(self.train_dataset, int(self.cfg.batch_size), self.train_sampler, rank)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)

    def prototype_dataloader(self) -> DataLoader:
        """Training normals, unaugmented, each once, in a fixed order, on every rank: what the workflow hands to
        `PRNModule.set_prototype_images` (rank 0 clusters them, the others receive the result)."""
        return self._loader(self.prototype_dataset, int(self.cfg.eval_batch_size), None, 0)

    # ------------------------------------------------------------------------------------------------ device side
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        training = self.trainer.training if self.trainer is not None else "kind" in batch
        return self.complete_training_batch(batch) if training else batch

    def complete_training_batch(self, batch: dict) -> dict:
        """Finish a collated training batch on its device: Perlin masks for simulated rows, the extended and
        simulated formulas with opacities from data.beta, label = mask non-empty; images stay in [0, 1]."""
        image, mask, kind, source = batch["image"], batch["mask"].clone(), batch["kind"], batch["source"]
        device = image.device
        generator = torch.Generator(device=device)
        generator.manual_seed(self._next_batch_seed())
        simulated = (kind == SampleKind.SIMULATED).nonzero().flatten()
        extended = (kind == SampleKind.EXTENDED).nonzero().flatten()
        if simulated.numel():
            mask[simulated] = perlin_masks(simulated.numel(), image.shape[-2], image.shape[-1], generator=generator,
                                           device=device, **self.perlin)
        beta = sample_beta(image.shape[0], self.beta_range, generator=generator, device=device)
        image = image.clone()
        if extended.numel():
            image[extended] = extend_anomalies(image[extended], source[extended], mask[extended], beta[extended])
        if simulated.numel():
            image[simulated] = simulate_anomalies(image[simulated], source[simulated], mask[simulated],
                                                  beta[simulated])
        label = (mask.flatten(1).amax(dim=1) > 0).to(torch.int64)
        return {"image": image, "mask": mask, "label": label, "kind": kind}

    def _next_batch_seed(self) -> int:
        """Seed of the next training batch's device draws: (seed, epoch, batch number in the epoch, rank).

        The epoch is the train sampler's, which Lightning sets before every epoch (standalone: `set_epoch` on
        `train_dataloader().sampler`)."""
        epoch = self.train_sampler.epoch if self.train_sampler is not None else 0
        counted_epoch, count = self._batch_counter
        count = count if counted_epoch == epoch else 0
        self._batch_counter = (epoch, count + 1)
        rank = world_size_and_rank()[1]
        state = np.random.SeedSequence([self.seed, seed_streams.BATCH, epoch, count, rank]).generate_state(1, np.uint64)
        return int(state[0])
