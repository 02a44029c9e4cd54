"""PRN as a LightningModule: prototypes before the first step, losses, exact validation/test metrics.

The pure network lives in `network.py`; this module adds what a training run needs around it: fitting the FAISS
prototypes once (rank 0, broadcast to every rank), the optimiser and learning-rate schedule, the validation-chosen
image threshold, and the metric states that Lightning synchronises across processes. It takes explicit arguments
(no run config), so it can be built in a notebook; `workflows/module_factory.py` builds it from a run config. What
the test pass produces is reported by a callback (`loggers/test_report.py`), not kept here.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from prn_lightning.data.datasets import SampleKind
from prn_lightning.errors import PRNUserError
from prn_lightning.metrics import AnomalyMetrics
from prn_lightning.metrics.names import (
    IMAGE_THRESHOLD,
    LEARNING_RATE,
    LOSS,
    METRICS,
    REAL_IMAGE_AUROC,
    REAL_PRO,
    TEST,
    TRAIN,
    VAL,
    key,
)
from prn_lightning.models.prn.attention import MultiSizeAttentionBlock
from prn_lightning.models.prn.loss import PRNLoss
from prn_lightning.models.prn.network import PRNNetwork
from prn_lightning.models.prn.optimisation import (
    OptimiserSettings,
    PrototypeSettings,
    SchedulerSettings,
    build_optimiser,
    build_scheduler,
)
from prn_lightning.models.prn.scoring import anomaly_map, image_score

RUN_CONFIG_KEY = "prn_run_config"  # where a checkpoint keeps the run config it was trained with (for `prn test`)
# the validation split's defect types: simulated anomalies, and real ones when data.num_val_anomalies > 0
VAL_DEFECT_TYPES = ("simulated", "real")


def validation_defect_ids(labels: torch.Tensor, defect_ids: torch.Tensor) -> torch.Tensor:
    """A validation batch's ids in `VAL_DEFECT_TYPES`: 0 simulated (no real type: defect_id -1), 1 real
    (data.num_val_anomalies), -1 normal."""
    return torch.where(labels == 1, (defect_ids >= 0).long(), -1)


def f1_optimal_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The image-score threshold with the best F1 (score >= threshold means anomalous); used on validation only."""
    if labels.sum() == 0:  # nothing to find: flag nothing
        return float(torch.nextafter(scores.max(), torch.tensor(float("inf"), dtype=scores.dtype)))
    if labels.sum() == labels.numel():
        return float(scores.min())
    order = torch.argsort(scores, descending=True)
    sorted_scores, sorted_labels = scores[order].double(), labels[order].double()
    true_pos = torch.cumsum(sorted_labels, 0)
    false_pos = torch.cumsum(1 - sorted_labels, 0)
    # Only thresholds at the last occurrence of a tied score are reachable.
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    f1 = 2 * true_pos / (true_pos + false_pos + sorted_labels.sum())
    f1[~last_of_tie] = -1
    return float(sorted_scores[int(torch.argmax(f1))])


def _concat(parts: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.cat(parts).to(dtype) if parts else torch.zeros(0, dtype=dtype, device=device)


def gather_uneven(module: pl.LightningModule, values: torch.Tensor) -> torch.Tensor:
    """All ranks' 1-D `values` concatenated in rank order; ranks may hold different counts (unrepeated sampler)."""
    if module.trainer is None or module.trainer.world_size == 1:
        return values
    counts = module.all_gather(torch.tensor([values.numel()], device=values.device)).reshape(-1)
    padded = torch.zeros(int(counts.max()), dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    gathered = module.all_gather(padded)  # (world, max_count)
    return torch.cat([gathered[rank, : int(count)] for rank, count in enumerate(counts)])


class CheckpointError(PRNUserError):
    """A checkpoint this version cannot rebuild a module from; the message names the file and the fix."""


class PRNModule(pl.LightningModule):
    """Trains and evaluates a `PRNNetwork`.

    Args:
        network: the network (its prototypes are fitted before the first step unless they already are).
        loss: SmoothL1 + lambda x focal (+ mu x Dice), with its weights.
        optimiser, scheduler: the optimisation settings (`model.optimizer`, `model.scheduler`).
        prototypes: k-means settings for the prototype bank (ratio, iterations, seed).
        topk: image score = mean of the top-k pixels of the anomaly map.
        map_smoothing_sigma: Gaussian smoothing of the anomaly map (0 = off).
        defect_types: the test set's defect types, for per-defect metrics.

    The image threshold is the F1-optimal one on the validation split, refreshed after every validation epoch.
    """

    def __init__(
        self,
        network: PRNNetwork,
        loss: PRNLoss,
        optimiser: OptimiserSettings,
        scheduler: SchedulerSettings,
        prototypes: PrototypeSettings,
        topk: int,
        map_smoothing_sigma: float = 0.0,
        defect_types: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.network = network
        self.loss = loss
        self.optimiser_settings = optimiser
        self.scheduler_settings = scheduler
        self.prototype_settings = prototypes
        self.topk = int(topk)
        self.map_smoothing_sigma = float(map_smoothing_sigma)
        self.defect_types = list(defect_types)
        self.save_hyperparameters({
            "network": {"settings": network.settings, "image_size": list(network.image_size)},
            "loss": {name: getattr(loss, name) for name in
                     ("smooth_l1_weight", "focal_weight", "focal_alpha", "focal_gamma", "dice_weight")},
            "optimiser": asdict(optimiser), "scheduler": asdict(scheduler), "prototypes": asdict(prototypes),
            "topk": self.topk, "map_smoothing_sigma": self.map_smoothing_sigma, "defect_types": self.defect_types,
        })
        self.run_config: dict | None = None  # carried into checkpoints for `prn test`; never read here
        self.register_buffer("image_threshold", torch.tensor(0.5))
        self.val_metrics = AnomalyMetrics(list(VAL_DEFECT_TYPES))
        self.test_metrics = AnomalyMetrics(self.defect_types)
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._prototype_images: Iterable[torch.Tensor | dict] | None = None

    # ----------------------------------------------------------------- checkpoints
    @classmethod
    def from_hyperparameters(cls, hparams: dict[str, Any], pretrained_backbone: bool = True) -> PRNModule:
        """The module a checkpoint's `hyper_parameters` describe (untrained until its state dict is loaded)."""
        network = PRNNetwork.from_config(hparams["network"]["settings"], hparams["network"]["image_size"],
                                         pretrained_backbone)
        return cls(network, PRNLoss(**hparams["loss"]), OptimiserSettings(**hparams["optimiser"]),
                   SchedulerSettings(**hparams["scheduler"]), PrototypeSettings(**hparams["prototypes"]),
                   hparams["topk"], hparams["map_smoothing_sigma"], hparams["defect_types"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> PRNModule:
        """Load a trained module with its run config (`run_config`); the backbone's weights and the prototypes come
        from the checkpoint: nothing is downloaded or re-clustered."""
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        except FileNotFoundError:
            raise
        except Exception as err:  # zip, pickle and EOF errors all mean: not a whole checkpoint
            raise CheckpointError(f"checkpoint {path} cannot be read: it is truncated or not a checkpoint "
                                  f"({type(err).__name__}); use another checkpoint of the run (checkpoints/"
                                  "last.ckpt or best.ckpt) or retrain") from err
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"checkpoint {path} is not a prn-lightning checkpoint (it holds a "
                                  f"{type(checkpoint).__name__}); pass a checkpoints/*.ckpt file of a run")
        hparams = checkpoint.get("hyper_parameters") or {}
        if "network" not in hparams:
            raise CheckpointError(f"checkpoint {path} was written by an older prn-lightning (before the module took "
                                  "explicit arguments and the network normalised its own input): retrain it with "
                                  "`prn train`")
        module = cls.from_hyperparameters(hparams, pretrained_backbone=False)
        module.load_state_dict(checkpoint["state_dict"])
        module.run_config = checkpoint.get(RUN_CONFIG_KEY)
        return module

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint[RUN_CONFIG_KEY] = self.run_config

    # ----------------------------------------------------------------- prototypes
    def set_prototype_images(self, images: Iterable[torch.Tensor | dict]) -> None:
        """The normal training images (batches in [0, 1], or dicts with an "image" entry, e.g. the datamodule's
        prototype loader) that `fit` clusters into prototypes before the first step, unless they are fitted already."""
        self._prototype_images = images

    def on_fit_start(self) -> None:
        """Cluster the prototypes once; a resumed run already has them from its checkpoint."""
        if self.network.prototypes is None or self.network.prototypes.fitted:
            return
        if self._prototype_images is None:
            raise RuntimeError("PRNModule has no prototypes and no images to fit them from: call "
                               "module.set_prototype_images(datamodule.prototype_dataloader()) before trainer.fit")
        self.fit_prototypes(self._prototype_images)

    def fit_prototypes(self, images: Iterable[torch.Tensor | dict]) -> None:
        """Rank 0 extracts features of every normal training image ([0, 1] batches) and runs FAISS k-means;
        every rank ends with the same prototypes (broadcast from rank 0)."""
        state = None
        if self.trainer is None or self.trainer.is_global_zero:
            features = self.network.extract_prototype_features(images)
            settings = self.prototype_settings
            self.network.prototypes.fit(features, ratio=settings.ratio, iterations=settings.iterations,
                                        seed=settings.seed)
            state = {k: v.cpu() for k, v in self.network.prototypes.state_dict().items()}
        if self.trainer is not None and self.trainer.world_size > 1:
            state = self.trainer.strategy.broadcast(state, src=0)
            self.network.prototypes.load_state_dict(state)
            self.network.prototypes.to(self.device)
            self._check_prototypes_identical()

    def _check_prototypes_identical(self) -> None:
        """Fail loudly if any rank's prototypes differ from rank 0's (they must be bit-identical)."""
        digest = torch.stack([p.double().sum() for p in self.network.prototypes.buffers()])
        everyone = self.all_gather(digest)
        if not torch.equal(everyone, digest.expand_as(everyone)):
            raise RuntimeError(f"prototypes differ across ranks (per-stage sums {everyone.tolist()})")

    # ----------------------------------------------------------------- steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def predict_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B,S,S) in [0,1] and image scores (B,) for images (B,3,S,S) in [0, 1]."""
        return self._score(self.network(images))

    def _score(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = anomaly_map(logits, self.map_smoothing_sigma)
        return maps, image_score(maps, self.topk)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # every kind but a seen anomaly is built on a normal training image, one the prototypes were fitted on
        members = batch["kind"] != SampleKind.SEEN if self.prototype_settings.leave_one_out else None
        logits = self.network(batch["image"], members)
        loss, parts = self.loss(logits, batch["mask"])
        size = batch["image"].shape[0]
        self.log(key(TRAIN, LOSS), loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name, value in parts.items():
            self.log(key(TRAIN, name), value, on_step=False, on_epoch=True, batch_size=size)
        self.log(key(TRAIN, LEARNING_RATE), self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True,
                 on_epoch=False, batch_size=size)
        return loss

    def _evaluate(
        self, batch: dict, metrics: AnomalyMetrics, defect_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.network(batch["image"])
        loss, _ = self.loss(logits, batch["mask"])
        maps, scores = self._score(logits)
        metrics.update(maps, batch["mask"][:, 0], scores, batch["label"], defect_ids)
        return loss, maps, scores

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        val_ids = validation_defect_ids(batch["label"], batch["defect_id"])
        loss, _, scores = self._evaluate(batch, self.val_metrics, val_ids)
        self.log(key(VAL, LOSS), loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self._val_scores.append(scores.detach())
        self._val_labels.append(batch["label"].detach())

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        real = self.val_metrics.per_defect()[VAL_DEFECT_TYPES.index("real")]
        self.val_metrics.reset()
        for metric in METRICS:
            self.log(key(VAL, metric.name), values[metric.name], prog_bar=metric.name in ("pixel_ap", "image_auroc"))
        if real["num_images"]:
            self.log(key(VAL, REAL_IMAGE_AUROC), float(real["image_auroc"]), prog_bar=True)
            self.log(key(VAL, REAL_PRO), float(real["pro"]))
        scores = gather_uneven(self, _concat(self._val_scores, torch.float32, self.device))
        labels = gather_uneven(self, _concat(self._val_labels, torch.int64, self.device))
        if scores.numel():
            self.image_threshold.fill_(f1_optimal_threshold(scores.float().cpu(), labels.cpu()))
        self.log(key(VAL, IMAGE_THRESHOLD), self.image_threshold)
        self._val_scores.clear()
        self._val_labels.clear()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()  # reset here, not at the end: the test report reads the metrics after the pass

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Updates the test metrics; returns the maps and scores for the test report (`loggers/test_report.py`)."""
        _, maps, scores = self._evaluate(batch, self.test_metrics, batch["defect_id"])
        return {"maps": maps.detach(), "scores": scores.detach()}

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        for metric in METRICS:
            self.log(key(TEST, metric.name), values[metric.name])

    # ----------------------------------------------------------------- optimisation
    def new_optimiser(self) -> torch.optim.Optimizer:
        """The optimiser over the trainable parameters, the attention's Q/K/V projections as its own group when
        `model.optimizer.qkv_weight_decay` is set."""
        qkv = [p for m in self.network.modules() if isinstance(m, MultiSizeAttentionBlock) for p in m.qkv.parameters()]
        return build_optimiser(self.optimiser_settings, [p for p in self.parameters() if p.requires_grad], qkv)

    def configure_optimizers(self):
        optimiser = self.new_optimiser()
        steps = self.trainer.estimated_stepping_batches if self.scheduler_settings.name == "warmup_cosine" else math.inf
        scheduler = build_scheduler(self.scheduler_settings, optimiser, int(self.trainer.max_epochs or 1), steps)
        return optimiser if scheduler is None else {"optimizer": optimiser, "lr_scheduler": scheduler}
