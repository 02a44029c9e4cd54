"""PRN as a LightningModule: prototypes before the first step, losses, exact validation/test metrics.

The pure network lives in `network.py`; this module adds what a training run needs around it: fitting the FAISS
prototypes once (rank 0, broadcast to every rank), the optimiser, the validation-chosen image threshold, and the
metric states that Lightning synchronises across processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from prn_lightning.errors import ConfigError
from prn_lightning.metrics import AnomalyMetrics
from prn_lightning.models.prn.loss import PRNLoss
from prn_lightning.models.prn.network import PRNNetwork
from prn_lightning.models.prn.scoring import anomaly_map, image_score


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


class PRNModule(pl.LightningModule):
    """Trains and evaluates a `PRNNetwork` from a resolved run config (`cfg` is stored in the checkpoint)."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "PRNModule":
        """Load a trained module; the backbone comes from the checkpoint, nothing is downloaded or re-clustered."""
        return cls.load_from_checkpoint(path, map_location=map_location, weights_only=False, pretrained_backbone=False)

    def __init__(
        self, cfg: dict | DictConfig, defect_types: list[str] | None = None, pretrained_backbone: bool = True
    ) -> None:
        """`pretrained_backbone=False` when loading a checkpoint: its state dict already holds the backbone."""
        super().__init__()
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        self.save_hyperparameters({"cfg": cfg, "defect_types": list(defect_types or [])})
        self.cfg = OmegaConf.create(cfg)
        model_cfg = self.cfg.model
        self.network = PRNNetwork.from_config(model_cfg, self.cfg.data.image_size, pretrained_backbone)
        self.loss = PRNLoss.from_config(model_cfg.loss)
        self.register_buffer("image_threshold", torch.tensor(0.5))
        self.val_metrics = AnomalyMetrics(["simulated"])
        self.test_metrics = AnomalyMetrics(list(defect_types or []))
        self.test_results: dict[str, Any] = {}
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._test_records: list[dict[str, torch.Tensor]] = []
        self._prototype_images: Iterable[torch.Tensor | dict] | None = None

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
            self.network.prototypes.fit(
                features,
                ratio=self.cfg.model.prototype_ratio,
                iterations=self.cfg.model.kmeans_iterations,
                seed=self.cfg.seed,
            )
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
        maps = anomaly_map(self.network(images), self.cfg.model.map_smoothing_sigma)
        return maps, image_score(maps, self.cfg.model.topk)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.network(batch["image"])
        loss, parts = self.loss(logits, batch["mask"])
        size = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _evaluate(
        self, batch: dict, metrics: AnomalyMetrics, defect_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.network(batch["image"])
        loss, _ = self.loss(logits, batch["mask"])
        maps = anomaly_map(logits, self.cfg.model.map_smoothing_sigma)
        scores = image_score(maps, self.cfg.model.topk)
        metrics.update(maps, batch["mask"][:, 0], scores, batch["label"], defect_ids)
        return loss, maps, scores

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # validation anomalies are all simulated: one defect type, id 0
        simulated_ids = torch.where(batch["label"] == 1, 0, -1)
        loss, _, scores = self._evaluate(batch, self.val_metrics, simulated_ids)
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["image"].shape[0])
        self._val_scores.append(scores.detach())
        self._val_labels.append(batch["label"].detach())

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        for name, value in values.items():
            self.log(f"val_{name}", value, prog_bar=name in ("pixel_ap", "image_auroc"))
        scores = gather_uneven(self, _concat(self._val_scores, torch.float32, self.device))
        labels = gather_uneven(self, _concat(self._val_labels, torch.int64, self.device))
        if scores.numel():
            self.image_threshold.fill_(f1_optimal_threshold(scores.float().cpu(), labels.cpu()))
        self.log("val_image_threshold", self.image_threshold)
        self._val_scores.clear()
        self._val_labels.clear()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, _, scores = self._evaluate(batch, self.test_metrics, batch["defect_id"])
        self._test_records.append({"index": batch["index"], "score": scores.detach(), "label": batch["label"]})

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        for name, value in values.items():
            self.log(f"test_{name}", value)
        records = {
            key: gather_uneven(self, _concat([r[key] for r in self._test_records], dtype, self.device)).cpu()
            for key, dtype in (("index", torch.int64), ("score", torch.float32), ("label", torch.int64))
        }
        self.test_results = {
            "metrics": values,
            "per_defect": self.test_metrics.per_defect(),
            "curves": self.test_metrics.curves(),
            "scores": records,
        }
        self.test_metrics.reset()
        self._test_records.clear()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        maps, scores = self.predict_images(batch["image"])
        return {"maps": maps, "scores": scores, "index": batch["index"]}

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        opt_cfg, sched_cfg = self.cfg.model.optimizer, self.cfg.model.scheduler
        params = [p for p in self.parameters() if p.requires_grad]
        optimisers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        if opt_cfg.name in optimisers:
            optimiser = optimisers[opt_cfg.name](params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
        elif opt_cfg.name == "sgd":
            optimiser = torch.optim.SGD(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, momentum=0.9)
        else:
            raise ConfigError(f"model.optimizer.name={opt_cfg.name!r} is not one of adam, adamw, sgd")
        if sched_cfg.name == "none":
            return optimiser
        if sched_cfg.name == "cosine":
            epochs = max(1, int(self.trainer.max_epochs or 1))
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
        elif sched_cfg.name == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimiser, sched_cfg.step_size, sched_cfg.gamma)
        else:
            raise ConfigError(f"model.scheduler.name={sched_cfg.name!r} is not one of none, cosine, step")
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
