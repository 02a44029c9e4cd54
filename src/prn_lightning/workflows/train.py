"""`prn train` and `prn test`: fit PRN, test the validation-selected checkpoint, write the run directory.

Run directory: runs/<dataset>/<category>/<timestamp>/ with config.yaml, seen_anomalies.txt, checkpoints/,
history.csv, metrics.json, per_defect.csv, curves.png, maps/*.png and the W&B run (wandb/).
"""
from __future__ import annotations

import os
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.config import apply_overrides
from prn_lightning.loggers.console import print_summary
from prn_lightning.loggers.run_artifacts import (
    HistoryWriter,
    plot_curves,
    render_panel,
    select_panel_indices,
    write_json,
    write_per_defect_csv,
)
from prn_lightning.loggers.wandb_run import make_wandb_logger
from prn_lightning.models.prn.lightning_module import PRNModule

RUN_DIR_ENV = "PRN_RUN_DIR"  # lets DDP ranks re-launched by Lightning find the directory rank 0 created


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's directory: run_dir if set, else runs_root/<dataset>/<category>/<timestamp> (shared by all ranks)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.runs_root) / str(cfg.data.dataset) / str(cfg.data.category) / stamp


def build_trainer(cfg: DictConfig, run_dir: Path, logger: Any, callbacks: list[pl.Callback]) -> pl.Trainer:
    """A Trainer from the `trainer` config group; evaluation samplers are the datamodule's own (no padding)."""
    # The frozen backbone is in eval mode on purpose (BatchNorm statistics must not move).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    if options.pop("enable_progress_bar") and _interactive():
        callbacks = callbacks + [RichProgressBar(leave=True)]
        options["enable_progress_bar"] = True
    else:
        options["enable_progress_bar"] = False
    return pl.Trainer(
        **options,
        default_root_dir=str(run_dir),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def _interactive() -> bool:
    return os.isatty(1) and not os.environ.get("CI")


def run_train(cfg: DictConfig) -> Path:
    """Fit, then test the checkpoint selected on validation; returns the run directory."""
    run_dir = resolve_run_dir(cfg)
    inherited = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # DDP ranks launched during fit inherit it
    try:
        return _train(cfg, run_dir)
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)


def _train(cfg: DictConfig, run_dir: Path) -> Path:
    started = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_dir = run_dir / "checkpoints"
    resume_from = None
    if cfg.resume:
        resume_from = cfg.ckpt or ckpt_dir / "last.ckpt"
        if not Path(resume_from).is_file():
            raise FileNotFoundError(
                f"resume=true but {resume_from} does not exist; pass run_dir=<an earlier run's directory> "
                "or ckpt=<path to last.ckpt>"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _with_run_dir(cfg, run_dir)
    if rank_zero_only.rank == 0:  # from RANK / SLURM_PROCID / LOCAL_RANK, before any process group exists
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    datamodule = PRNDataModule(cfg.data, seed=cfg.seed, run_dir=run_dir)
    datamodule.setup("fit")  # the module's test metrics need the defect types; setup is idempotent
    module = PRNModule(cfg, defect_types=datamodule.defect_types)
    module.set_prototype_images(datamodule.prototype_dataloader())
    logger = make_wandb_logger(cfg, run_dir, job_type="train")
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=cfg.model.monitor, mode="max", save_last=True, save_top_k=1
    )
    callbacks: list[pl.Callback] = [checkpoint, HistoryWriter(run_dir / "history.csv")]
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, run_dir, logger, callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)

    test_ckpt = checkpoint.best_model_path or checkpoint.last_model_path or None
    trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=False, verbose=False)
    if trainer.is_global_zero:
        extra = {
            "checkpoint": Path(test_ckpt).name if test_ckpt else None,
            "epochs": trainer.current_epoch,
            "wall_time_s": round(time.time() - started, 1),
            "prototypes_per_stage": module.network.prototypes.counts() if cfg.model.use_prototypes else [],
        }
        write_results(cfg, run_dir, module, datamodule, logger, extra)
    if logger is not None:
        logger.experiment.finish()
    _close_process_group()
    return run_dir


def run_test(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Evaluate a checkpoint with the config it was trained with (plus `overrides`); writes <run>/test-<time>/."""
    if not cfg.ckpt or not Path(cfg.ckpt).is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt!r} is not a checkpoint file; pass ckpt=runs/.../checkpoints/best.ckpt")
    ckpt = Path(cfg.ckpt)
    module = PRNModule.from_checkpoint(ckpt)
    kept = [o for o in overrides if not o.startswith(("ckpt=", "run_dir="))]
    merged = apply_overrides(module.cfg, kept)
    origin = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out_dir = Path(cfg.run_dir) if cfg.run_dir else origin / f"test-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = _with_run_dir(merged, out_dir)
    pl.seed_everything(merged.seed, workers=True)
    datamodule = PRNDataModule(merged.data, seed=merged.seed, run_dir=out_dir)
    logger = make_wandb_logger(merged, out_dir, job_type="test")
    trainer = build_trainer(merged, out_dir, logger, [])
    started = time.time()
    trainer.test(module, datamodule=datamodule, verbose=False)
    result: dict[str, Any] = {}
    if trainer.is_global_zero:
        extra = {"checkpoint": str(ckpt), "wall_time_s": round(time.time() - started, 1)}
        result = write_results(merged, out_dir, module, datamodule, logger, extra)
    if logger is not None:
        logger.experiment.finish()
    _close_process_group()
    return result


def _close_process_group() -> None:
    """Destroy the DDP process group once nothing else is collective: gloo's threads otherwise abort at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _with_run_dir(cfg: DictConfig, run_dir: Path) -> DictConfig:
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    return cfg


def write_results(
    cfg: DictConfig, run_dir: Path, module: PRNModule, datamodule: PRNDataModule, logger: Any, extra: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json, per_defect.csv, curves.png, maps/*.png, the console summary, and the same in W&B."""
    results = module.test_results
    metrics = {name: float(value) for name, value in results["metrics"].items()}
    summary = {
        **metrics,
        "num_test_images": len(datamodule.test_samples),
        "num_seen_anomalies": len(datamodule.seen_anomalies),
        "dataset": str(cfg.data.dataset),
        "category": str(cfg.data.category),
        "seed": int(cfg.seed),
        "image_threshold": float(module.image_threshold),
        **extra,
    }
    write_json(run_dir / "metrics.json", summary)
    write_per_defect_csv(run_dir / "per_defect.csv", results["per_defect"])
    plot_curves(run_dir / "curves.png", results["curves"], metrics)
    panels = _render_panels(cfg, run_dir, module, datamodule, results["scores"])
    print_summary(summary)
    if logger is not None:
        _log_to_wandb(logger, summary, results, datamodule, panels, run_dir)
    return summary


@torch.no_grad()
def _render_panels(
    cfg: DictConfig, run_dir: Path, module: PRNModule, datamodule: PRNDataModule, scores: dict[str, torch.Tensor]
) -> list[tuple[str, np.ndarray]]:
    if not scores or scores["index"].numel() == 0:
        return []
    order = torch.argsort(scores["index"])
    index, score, label = scores["index"][order], scores["score"][order], scores["label"][order]
    dataset = datamodule.test_dataset
    maps_dir = run_dir / "maps"
    maps_dir.mkdir(exist_ok=True)
    threshold = float(module.image_threshold)
    module.eval()
    panels = []
    for position, kind in select_panel_indices(score, label, int(cfg.logger.num_map_panels)):
        sample = dataset[int(index[position])]
        image = sample["image"].unsqueeze(0).to(module.device)
        amap, img_score = module.predict_images(image)
        picture = sample["image"].permute(1, 2, 0).clamp(0, 1).numpy()
        name = Path(sample["image_path"]).stem
        title = f"{kind}: {Path(sample['image_path']).parent.name}/{name}"
        panel = render_panel(
            picture, sample["mask"][0].cpu().numpy(), amap[0].cpu().numpy(), float(img_score[0]), threshold, title
        )
        file_name = f"{len(panels):02d}_{kind}_{Path(sample['image_path']).parent.name}_{name}.png"
        Image.fromarray(panel).save(maps_dir / file_name)
        panels.append((title, panel))
    return panels


def _log_to_wandb(logger, summary, results, datamodule, panels, run_dir: Path) -> None:
    import wandb

    logger.log_metrics({f"test/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    per_defect = results["per_defect"]
    if per_defect:
        columns = ["defect_type", "num_images", "image_auroc", "pro"]
        logger.log_table("test/per_defect", columns=columns, data=[[r[c] for c in columns] for r in per_defect])
    seen = [[str(s.image_path), s.defect_type] for s in datamodule.seen_anomalies]
    if seen:
        logger.log_table("seen_anomalies", columns=["image_path", "defect_type"], data=seen)
    curves = results["curves"]
    roc = wandb.Table(data=np.stack([np.asarray(curves["roc"]["fpr"]), np.asarray(curves["roc"]["tpr"])], 1).tolist(),
                      columns=["fpr", "tpr"])
    pr = wandb.Table(data=np.stack([np.asarray(curves["pr"]["recall"]), np.asarray(curves["pr"]["precision"])], 1)
                     .tolist(), columns=["recall", "precision"])
    pro = wandb.Table(data=np.stack([np.asarray(curves["pro"]["fpr"]), np.asarray(curves["pro"]["pro"])], 1).tolist(),
                      columns=["fpr", "pro"])
    logger.experiment.log({
        "test/roc_curve": wandb.plot.line(roc, "fpr", "tpr", title="pixel ROC"),
        "test/pr_curve": wandb.plot.line(pr, "recall", "precision", title="pixel PR"),
        "test/pro_curve": wandb.plot.line(pro, "fpr", "pro", title="PRO"),
        "test/curves": wandb.Image(str(run_dir / "curves.png")),
    })
    if panels:
        logger.log_image("test/anomaly_maps", images=[p for _, p in panels], caption=[t for t, _ in panels])
    logger.experiment.summary.update({f"test/{k}": v for k, v in summary.items()})
