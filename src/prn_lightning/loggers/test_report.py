"""The test report: a callback that turns one test pass into metrics.json, per_defect.csv, curves.png, maps/*.png,
the console summary and the same in W&B.

It reads what `PRNModule.test_step` returns (maps and scores) and the module's test metrics; the maps of the images
that may end up in a panel (the lowest-scoring anomalies, the highest-scoring normals, the highest-scoring
anomalies) are kept while the pass runs, so nothing is inferred a second time. In DDP every rank keeps its own
candidates and rank 0 receives them; the choice of panels is over all ranks' scores.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from prn_lightning.loggers.console import print_summary
from prn_lightning.loggers.run_artifacts import (
    panel_candidates,
    plot_curves,
    render_panel,
    select_panel_indices,
    write_json,
    write_per_defect_csv,
)
from prn_lightning.metrics.names import TEST, key
from prn_lightning.models.prn.lightning_module import gather_uneven


class TestReport(pl.Callback):
    """Writes the test artefacts of the module's test pass into `run_dir` and logs them to W&B (rank 0).

    Args:
        run_dir: where metrics.json, per_defect.csv, curves.png and maps/ go.
        num_map_panels: anomaly-map panels to draw (`logger.num_map_panels`).
        run_info: extra entries of metrics.json (dataset, category, seed, checkpoint, ...); may be completed
            before the test pass starts (e.g. with the checkpoint chosen by training).
        started: the time wall_time_s counts from (default: when the callback is made).
    """

    __test__ = False  # not a pytest class

    def __init__(self, run_dir: str | Path, num_map_panels: int, run_info: dict[str, Any] | None = None,
                 started: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.num_map_panels = int(num_map_panels)
        self.run_info = dict(run_info or {})
        self.started = time.time() if started is None else started
        self.summary: dict[str, Any] = {}  # what metrics.json holds, after the test pass
        self._reset()

    def _reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []
        self._candidates: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------------- collecting
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: dict[str, torch.Tensor],
                          batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._scores.append(outputs["scores"].float().cpu())
        self._labels.append(batch["label"].cpu())
        self._indices.append(batch["index"].cpu())
        if self.num_map_panels <= 0:
            return
        scores, labels, indices = (torch.cat(x) for x in (self._scores, self._labels, self._indices))
        order = torch.argsort(indices)  # candidates in the same order as the final choice: by score, then index
        keep = {int(indices[order][p]) for p in panel_candidates(scores[order], labels[order], self.num_map_panels)}
        self._candidates = {i: c for i, c in self._candidates.items() if i in keep}
        for row, index in enumerate(batch["index"].tolist()):
            if index in keep:
                self._candidates[index] = {
                    "image": batch["image"][row].permute(1, 2, 0).clamp(0, 1).float().cpu().numpy(),
                    "mask": batch["mask"][row, 0].float().cpu().numpy(),
                    "map": outputs["maps"][row].float().cpu().numpy(),
                    "score": float(outputs["scores"][row]),
                    "path": str(batch["image_path"][row]),
                }

    # ------------------------------------------------------------------------------------------- reporting
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics_state = pl_module.test_metrics
        metrics = {name: float(value) for name, value in metrics_state.compute().items()}  # collective in DDP
        per_defect, curves = metrics_state.per_defect(), metrics_state.curves()
        gathered = {
            name: gather_uneven(pl_module, torch.cat(parts).to(pl_module.device) if parts else
                                torch.zeros(0, dtype=dtype, device=pl_module.device)).cpu()
            for name, parts, dtype in (("score", self._scores, torch.float32), ("label", self._labels, torch.int64),
                                       ("index", self._indices, torch.int64))
        }
        candidates = self._gather_candidates(trainer)
        if not trainer.is_global_zero:
            return
        summary = {
            **metrics,
            "num_test_images": int(gathered["index"].numel()),
            "image_threshold": float(pl_module.image_threshold),
            **self.run_info,
            "wall_time_s": round(time.time() - self.started, 1),
        }
        write_json(self.run_dir / "metrics.json", summary)
        write_per_defect_csv(self.run_dir / "per_defect.csv", per_defect)
        plot_curves(self.run_dir / "curves.png", curves, metrics)
        panels = self._write_panels(gathered, candidates, summary["image_threshold"])
        print_summary(summary)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_to_wandb(logger, summary, per_defect, curves, panels)
        self.summary = summary
        self._reset()

    def _gather_candidates(self, trainer: pl.Trainer) -> dict[int, dict[str, Any]]:
        """Every rank's panel candidates on rank 0 (a collective call: every rank makes it)."""
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return self._candidates
        everyone = [None] * trainer.world_size if trainer.is_global_zero else None
        torch.distributed.gather_object(self._candidates, everyone, dst=0)
        return {i: c for part in everyone or [] for i, c in part.items()}

    def _write_panels(self, gathered: dict[str, torch.Tensor], candidates: dict[int, dict[str, Any]],
                      threshold: float) -> list[tuple[str, np.ndarray]]:
        order = torch.argsort(gathered["index"])
        index, score, label = gathered["index"][order], gathered["score"][order], gathered["label"][order]
        chosen = select_panel_indices(score, label, self.num_map_panels)
        if not chosen:
            return []
        maps_dir = self.run_dir / "maps"
        maps_dir.mkdir(exist_ok=True)
        panels = []
        for position, kind in chosen:
            sample = candidates[int(index[position])]
            path = Path(sample["path"])
            title = f"{kind}: {path.parent.name}/{path.stem}"
            panel = render_panel(sample["image"], sample["mask"], sample["map"], sample["score"], threshold, title)
            Image.fromarray(panel).save(maps_dir / f"{len(panels):02d}_{kind}_{path.parent.name}_{path.stem}.png")
            panels.append((title, panel))
        return panels

    def _log_to_wandb(self, logger: WandbLogger, summary: dict[str, Any], per_defect: list[dict],
                      curves: dict[str, Any], panels: list[tuple[str, np.ndarray]]) -> None:
        import wandb

        numeric = {key(TEST, k): v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        logger.log_metrics(numeric)
        if per_defect:
            columns = ["defect_type", "num_images", "image_auroc", "pro"]
            logger.log_table(key(TEST, "per_defect"), columns=columns,
                             data=[[row[c] for c in columns] for row in per_defect])

        def line(x: np.ndarray, y: np.ndarray, columns: list[str], title: str):
            table = wandb.Table(data=np.stack([np.asarray(x), np.asarray(y)], 1).tolist(), columns=columns)
            return wandb.plot.line(table, *columns, title=title)

        logger.experiment.log({
            key(TEST, "roc_curve"): line(curves["roc"]["fpr"], curves["roc"]["tpr"], ["fpr", "tpr"], "pixel ROC"),
            key(TEST, "pr_curve"): line(curves["pr"]["recall"], curves["pr"]["precision"], ["recall", "precision"],
                                        "pixel PR"),
            key(TEST, "pro_curve"): line(curves["pro"]["fpr"], curves["pro"]["pro"], ["fpr", "pro"], "PRO"),
            key(TEST, "curves"): wandb.Image(str(self.run_dir / "curves.png")),
        })
        if panels:
            logger.log_image(key(TEST, "anomaly_maps"), images=[p for _, p in panels], caption=[t for t, _ in panels])
        logger.experiment.summary.update({key(TEST, k): v for k, v in summary.items()})
