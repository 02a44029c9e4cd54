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
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from prn_lightning.config import apply_overrides
from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.loggers.run_artifacts import HistoryWriter
from prn_lightning.loggers.test_report import TestReport
from prn_lightning.loggers.wandb_run import log_seen_anomalies, make_wandb_logger
from prn_lightning.metrics.names import stage_key
from prn_lightning.models.prn.lightning_module import CheckpointError, PRNModule
from prn_lightning.workflows.module_factory import build_module

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
    module = build_module(cfg, defect_types=datamodule.defect_types)
    module.set_prototype_images(datamodule.prototype_dataloader())
    logger = make_wandb_logger(cfg, run_dir, job_type="train")
    log_seen_anomalies(logger, datamodule.seen_anomalies)
    # `val_pixel_ap` in configs from before the train/ val/ test/ names means `val/pixel_ap`
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=stage_key(cfg.model.monitor),
                                 mode="max", save_last=True, save_top_k=1)
    report = TestReport(run_dir, cfg.logger.num_map_panels, _run_info(cfg, datamodule), started=started)
    trainer = build_trainer(cfg, run_dir, logger, [checkpoint, HistoryWriter(run_dir / "history.csv"), report])
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)

    test_ckpt = checkpoint.best_model_path or checkpoint.last_model_path or None
    report.run_info.update({
        "checkpoint": Path(test_ckpt).name if test_ckpt else None,
        "epochs": trainer.current_epoch,
        "prototypes_per_stage": module.network.prototypes.counts() if module.network.prototypes is not None else [],
    })
    trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=False, verbose=False)
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
    if module.run_config is None:
        raise CheckpointError(f"checkpoint {ckpt} holds no run config (it was not written by `prn train`); "
                              "`prn test` needs one to rebuild the test data")
    kept = [o for o in overrides if not o.startswith(("ckpt=", "run_dir="))]
    merged = apply_overrides(OmegaConf.create(module.run_config), kept)
    origin = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out_dir = Path(cfg.run_dir) if cfg.run_dir else origin / f"test-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = _with_run_dir(merged, out_dir)
    pl.seed_everything(merged.seed, workers=True)
    datamodule = PRNDataModule(merged.data, seed=merged.seed, run_dir=out_dir)
    datamodule.setup("test")
    logger = make_wandb_logger(merged, out_dir, job_type="test")
    log_seen_anomalies(logger, datamodule.seen_anomalies)
    run_info = {**_run_info(merged, datamodule), "checkpoint": str(ckpt)}
    report = TestReport(out_dir, merged.logger.num_map_panels, run_info)
    trainer = build_trainer(merged, out_dir, logger, [report])
    trainer.test(module, datamodule=datamodule, verbose=False)
    if logger is not None:
        logger.experiment.finish()
    _close_process_group()
    return report.summary


def _run_info(cfg: DictConfig, datamodule: PRNDataModule) -> dict[str, Any]:
    """The metrics.json entries that describe the run rather than its scores."""
    return {"num_seen_anomalies": len(datamodule.seen_anomalies), "dataset": str(cfg.data.dataset),
            "category": str(cfg.data.category), "seed": int(cfg.seed)}


def _close_process_group() -> None:
    """Destroy the DDP process group once nothing else is collective: gloo's threads otherwise abort at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _with_run_dir(cfg: DictConfig, run_dir: Path) -> DictConfig:
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    return cfg
