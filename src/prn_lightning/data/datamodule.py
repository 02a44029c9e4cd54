"""PRNDataModule: the `data` config section -> training, validation, test and prototype loaders.

setup() checks the `data` config values, loads the category, checks that every image and mask decodes (one error
listing every bad file, before any training step), moves the seen anomalies from test to train (writing their list
into the run directory, or taking a run's recorded list), holds out `val_fraction` of train/good for validation
(plus `num_val_anomalies` real anomalies, drawn after the seen ones, when asked for), and builds the datasets.
Workers prepare images on CPU; `on_after_batch_transfer` completes training batches on their device (Perlin masks,
opacities, the extended/simulated formulas, labels). Images stay in [0, 1]: the network normalises its own input.

Reproducibility: every training sample is a function of (seed, epoch, position), every validation anomaly of
(seed, index), and each device-side batch draw of (seed, epoch, batch number, rank); results do not depend on the
number of workers. The Trainer must run with `use_distributed_sampler=False`: this module builds its own samplers
(an epoch-schedule split for training, an unrepeated one for evaluation, so metrics are exact in DDP). Its
`state_dict` (in every checkpoint) holds the training batch counter, so a run resumed from a checkpoint saved in
the middle of an epoch skips the batches already done and continues with the same draws.
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

from prn_lightning.config_checks import check_data_config, image_size_hw
from prn_lightning.data import seed_streams
from prn_lightning.data.checks import DataReport, check_splits
from prn_lightning.data.datasets import EvalDataset, SampleKind, TrainMixDataset
from prn_lightning.data.samplers import EpochScheduleSampler, UnrepeatedDistributedSampler, world_size_and_rank
from prn_lightning.data.seen import (
    SEEN_LIST,
    VAL_ANOMALY_LIST,
    read_seen_list,
    split_held_out,
    split_recorded_seen,
    write_seen_list,
)
from prn_lightning.data.sources.records import Sample
from prn_lightning.data.sources.registry import load_category
from prn_lightning.errors import ConfigError, DatasetError
from prn_lightning.imaging.tensors import unpadded_batch
from prn_lightning.synthesis.augment import SourceAugmentation
from prn_lightning.synthesis.extended import extend_anomalies
from prn_lightning.synthesis.perlin import perlin_masks
from prn_lightning.synthesis.simulated import sample_beta, simulate_anomalies
from prn_lightning.synthesis.textures import TextureSource, resolve_texture_dir


def seed_worker(worker_id: int) -> None:
    """Seed numpy/random from torch's per-worker seed (new each epoch unless workers persist).

    cv2's thread count is deliberately left alone: `cv2.setNumThreads` in a forked worker deadlocks once the parent
    process has used cv2's thread pool (seen with opencv-python-headless 5.0)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def hold_out(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training normals, validation normals): a seeded `fraction` of train/good, at least one of each when > 0."""
    n_val = int(round(fraction * len(train)))
    if fraction > 0:
        n_val = max(n_val, 1)
    if len(train) - n_val < 1:
        raise ConfigError(f"data.val_fraction={fraction} leaves no training image out of {len(train)} in "
                          "train/good; lower data.val_fraction")
    chosen = set(np.random.default_rng([seed, seed_streams.HOLDOUT]).permutation(len(train))[:n_val].tolist())
    return ([s for i, s in enumerate(train) if i not in chosen], [s for i, s in enumerate(train) if i in chosen])


def generation_weights(generation: Mapping, num_seen: int) -> dict[SampleKind, float]:
    """Weights of the enabled anomaly strategies (data.generation.*, checked by `check_data_config`); seen and
    extended need seen anomalies."""
    weights = {}
    for kind in (SampleKind.SEEN, SampleKind.EXTENDED, SampleKind.SIMULATED):
        name = kind.name.lower()
        weight = float(generation[f"{name}_weight"])
        if bool(generation[name]) and weight > 0 and (kind == SampleKind.SIMULATED or num_seen > 0):
            weights[kind] = weight
    return weights


def perlin_settings(perlin: Mapping) -> dict[str, Any]:
    """data.perlin (checked by `check_data_config`) -> keyword arguments of `perlin_masks`."""
    return dict(min_scale=int(perlin["min_scale"]), max_scale=int(perlin["max_scale"]),
                threshold=float(perlin["threshold"]), rotation_deg=float(perlin["rotation"]),
                min_threshold=None if perlin.get("min_threshold") is None else float(perlin["min_threshold"]))


class PRNDataModule(pl.LightningDataModule):
    """Loaders for PRN; see the module docstring. `data_cfg` is the `data` section of the config.

    `seen_list` (a run's seen_anomalies.txt, its paths below `seen_list_root`, default data.root) replaces the
    seen-anomaly draw: `prn test` and resumed runs use exactly the run's seen anomalies, and the validation
    anomalies of `val_anomalies.txt` beside it (`VAL_ANOMALY_LIST`) when the run drew any. Recorded files missing
    from this dataset's test split are an error unless `other_data=True` (evaluating on another dataset: the
    recorded files present are still kept out of the test set)."""

    def __init__(self, data_cfg: DictConfig | Mapping, seed: int, run_dir: str | Path | None = None, *,
                 seen_list: str | Path | None = None, seen_list_root: str | Path | None = None,
                 other_data: bool = False) -> None:
        super().__init__()
        self.cfg = data_cfg if isinstance(data_cfg, DictConfig) else OmegaConf.create(dict(data_cfg))
        self.seed = int(seed) % 2**63
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seen_list = Path(seen_list) if seen_list is not None else None
        self.seen_list_root = Path(seen_list_root) if seen_list_root is not None else None
        self.other_data = other_data
        self.data_report: DataReport | None = None
        self.splits = None
        self.seen_anomalies: list[Sample] = []
        self.val_anomalies: list[Sample] = []  # real anomalies of the validation split (data.num_val_anomalies)
        self.test_samples: list[Sample] = []
        self.val_samples: list[Sample] = []
        self.train_normals: list[Sample] = []
        self.defect_types: list[str] = []
        self.train_sampler: EpochScheduleSampler | None = None
        self._batch_counter = (0, 0)  # (epoch, training batches completed in it): seeds the device-side draws
        self._resume_point: tuple[int, int] | None = None  # the batch counter of the checkpoint resumed from

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        cfg = self.cfg
        check_data_config(cfg)
        self.image_size = image_size_hw(cfg.image_size)  # (H, W)
        self.resize = str(cfg.get("resize", "squash"))  # .get: a run config from before the key had squash
        self.perlin = perlin_settings(cfg.perlin)
        self.beta_range = (float(cfg.beta[0]), float(cfg.beta[1]))
        anomaly_ratio = float(cfg.anomaly_ratio)
        per_normal = int(cfg.val_synthetic_per_normal)

        splits = load_category(cfg)
        self.data_report = check_splits(splits, self.image_size, resize=self.resize)
        self.data_report.raise_for_unreadable()
        if world_size_and_rank()[1] == 0:
            self.data_report.warn()
        self.splits = splits
        # .get: a run config from before the key drew none
        self.seen_anomalies, self.val_anomalies, self.test_samples = self._split_held_out(
            int(cfg.num_seen_anomalies), int(cfg.get("num_val_anomalies", 0)))
        self.defect_types = self.splits.defect_types
        self.train_normals, self.val_samples = hold_out(self.splits.train, float(cfg.val_fraction), self.seed)
        weights = generation_weights(cfg.generation, len(self.seen_anomalies))
        self.samples_per_epoch = self._samples_per_epoch(anomaly_ratio)
        if self.run_dir is not None and world_size_and_rank()[1] == 0:
            seen_path, val_path = self.run_dir / SEEN_LIST, self.run_dir / VAL_ANOMALY_LIST
            if not seen_path.exists():
                write_seen_list(seen_path, self.seen_anomalies)
            if self.val_anomalies and not val_path.exists():
                write_seen_list(val_path, self.val_anomalies)

        # .get with the behaviour of run configs from before these keys (`prn test`/resume of an older run)
        source_augmentation = cfg.get("source_augmentation", {"ops": [], "per_source": 0})
        textures = TextureSource(resolve_texture_dir(cfg.texture_dir, cfg.root), self.image_size,
                                 SourceAugmentation(list(source_augmentation["ops"]),
                                                    int(source_augmentation["per_source"])),
                                 in_place=float(source_augmentation.get("in_place", 0.0)))
        estimate_objects = cfg.foreground == "object" or (cfg.foreground == "auto" and not self.splits.is_texture)
        self.train_dataset = TrainMixDataset(
            self.train_normals, self.seen_anomalies, image_size=self.image_size,
            samples_per_epoch=self.samples_per_epoch, anomaly_ratio=anomaly_ratio, weights=weights,
            texture_source=textures, estimate_objects=estimate_objects, seed=self.seed, resize=self.resize,
            seen_augmentation=str(cfg.get("seen_augmentation", "geometric")),
            extended_augmentation=str(cfg.get("extended_defect_augmentation", "geometric")))
        self.val_dataset = EvalDataset(self.val_samples + self.val_anomalies, self.image_size, self.defect_types,
                                       resize=self.resize,
                                       simulated_per_sample=per_normal, texture_source=textures, perlin=self.perlin,
                                       beta_range=self.beta_range, seed=self.seed)
        self.test_dataset = EvalDataset(self.test_samples, self.image_size, self.defect_types, resize=self.resize)
        self.prototype_dataset = EvalDataset(self.train_normals, self.image_size, resize=self.resize)

    def _split_held_out(self, num_seen: int, num_val: int) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """(seen anomalies, validation anomalies, test samples): drawn (never an anomaly with an empty mask), or the
        run's recorded lists."""
        if self.seen_list is None:
            return split_held_out(self.splits, num_seen, num_val, self.seed, unusable=self.data_report.empty_masks)
        seen, test = self._recorded(self.seen_list, self.splits.test, "seen anomalies")
        val_list = self.seen_list.with_name(VAL_ANOMALY_LIST)
        if not val_list.is_file():
            if num_val and not self.other_data:
                raise DatasetError(f"the run drew data.num_val_anomalies={num_val} but their list {val_list} does not "
                                   "exist: without it the test set cannot exclude the anomalies its checkpoint was "
                                   "chosen on")
            return seen, [], test
        val, test = self._recorded(val_list, test, "validation anomalies")
        return seen, val, test

    def _recorded(self, path: Path, test: list[Sample], what: str) -> tuple[list[Sample], list[Sample]]:
        """(the samples listed in `path` found in `test`, `test` without them)."""
        if not path.is_file():
            raise DatasetError(f"the run's seen-anomaly list {path} does not exist: without it the test "
                               "set cannot exclude what the model trained on")
        recorded = read_seen_list(path)
        found, rest, missing = split_recorded_seen(test, self.splits.root, recorded,
                                                   self.seen_list_root or self.cfg.root)
        if missing and not self.other_data:
            raise DatasetError(f"{len(missing)} of the run's {len(recorded)} {what} ({path}) are "
                               f"not in the test split of data.root={self.cfg.root}, data.category="
                               f"{self.cfg.category}, e.g. {missing[0].image_path}; this is not the run's dataset. "
                               "To evaluate on other data anyway, add evaluate_on_other_data=true")
        return found, rest

    def _samples_per_epoch(self, anomaly_ratio: float) -> int:
        value = self.cfg.samples_per_epoch
        if value is None:  # anomaly_ratio < 1 here: `check_data_config` refuses null with a ratio of 1
            return max(1, round(len(self.train_normals) / (1.0 - anomaly_ratio)))
        return int(value)

    # ------------------------------------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the training batch counter (epoch, batches done in it)."""
        return {"batch_counter": list(self._batch_counter)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the batch counter; the train sampler then skips the batches of that epoch already done."""
        epoch, count = (int(v) for v in state_dict["batch_counter"])
        self._batch_counter = (epoch, count)
        self._resume_point = (epoch, count)

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
        if self.trainer is not None:
            # With loader workers the first epoch's indices are drawn before Lightning's set_epoch: start at the
            # epoch the loop will run (a resumed run does not begin at epoch 0)
            self.train_sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        if self._resume_point is not None:
            epoch, batches = self._resume_point
            self.train_sampler.skip(epoch, batches * int(self.cfg.batch_size))
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
            if self.resize == "keep-aspect":  # on the image, never on its padding (an emptied mask: label 0)
                mask[simulated] *= unpadded_batch(image[simulated])
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
