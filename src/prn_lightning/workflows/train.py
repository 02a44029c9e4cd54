"""`prn train` and `prn test`: fit PRN, test the validation-selected checkpoint, write the run directory.

Run directory: runs/<dataset>/<category>/<timestamp>-<suffix>/ with config.yaml, seen_anomalies.txt, checkpoints/,
history.csv, metrics.json, per_defect.csv, curves.png, maps/*.png and the W&B run (wandb/). A new run never shares
its directory; `resume=RUN` continues a run exactly with its own config (workflows/run_dir.py, workflows/resume.py).
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from prn_lightning.config import apply_overrides
from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.data.seen import SEEN_LIST
from prn_lightning.loggers.run_artifacts import HistoryWriter
from prn_lightning.loggers.test_report import TestReport
from prn_lightning.loggers.wandb_run import log_seen_anomalies, make_wandb_logger
from prn_lightning.metrics import AnomalyMetrics
from prn_lightning.metrics.names import stage_key
from prn_lightning.models.prn.lightning_module import CheckpointError, PRNModule
from prn_lightning.workflows.module_factory import build_module
from prn_lightning.workflows.resume import AtomicCheckpointIO, Preemption
from prn_lightning.workflows.run_dir import OpenedRun, check_evaluation_data, open_run

RUN_DIR_ENV = "PRN_RUN_DIR"  # lets DDP ranks re-launched by Lightning find the directory rank 0 created
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a job scheduler expects from a pre-empted process


def build_trainer(cfg: DictConfig, run_dir: Path, logger: Any, callbacks: list[pl.Callback]) -> pl.Trainer:
    """A Trainer from the `trainer` config group; evaluation samplers are the datamodule's own (no padding)."""
    # The frozen backbone is in eval mode on purpose (BatchNorm statistics must not move).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # a checkpoint from the middle of an epoch resumes exactly: the datamodule skips the batches already done
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
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
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def _interactive() -> bool:
    return os.isatty(1) and not os.environ.get("CI")


def run_train(cfg: DictConfig) -> Path:
    """Fit, then test the checkpoint selected on validation; returns the run directory.

    A new run gets a directory of its own; `resume=RUN` (or resume=true run_dir=RUN) continues that run from its
    newest checkpoint with its config.yaml and seen anomalies. A run that fails before its first checkpoint removes
    what it created; SIGTERM saves checkpoints/last.ckpt and ends the process with exit code 143."""
    inherited = os.environ.get(RUN_DIR_ENV)
    # rank_zero_only.rank comes from RANK / SLURM_PROCID / LOCAL_RANK, before any process group exists
    run = open_run(cfg, rank_zero_only.rank, inherited)
    os.environ[RUN_DIR_ENV] = str(run.run_dir)  # DDP ranks launched during fit inherit it
    try:
        return _train(run)
    except SIGTERMException:
        print(f"stopped by SIGTERM; continue with: prn train resume={run.run_dir}", file=sys.stderr, flush=True)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    except BaseException:
        if run.created is not None:
            run.created.remove_unless_checkpointed()
        raise
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)


def _train(run: OpenedRun) -> Path:
    cfg, run_dir = run.cfg, run.run_dir
    started = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    ckpt_dir = run_dir / "checkpoints"
    recorded = run_dir / SEEN_LIST  # a resumed run keeps the seen (and validation) anomalies it was started with
    datamodule = PRNDataModule(cfg.data, seed=cfg.seed, run_dir=run_dir,
                               seen_list=recorded if cfg.resume and recorded.is_file() else None)
    datamodule.setup("fit")  # the module's test metrics need the defect types; setup is idempotent
    module = build_module(cfg, defect_types=datamodule.defect_types)
    module.set_prototype_images(datamodule.prototype_dataloader())
    logger = make_wandb_logger(cfg, run_dir, job_type="train")
    log_seen_anomalies(logger, datamodule.seen_anomalies)
    # `val_pixel_ap` in configs from before the train/ val/ test/ names means `val/pixel_ap`
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=stage_key(cfg.model.monitor),
                                 mode="max", save_top_k=1)
    # last.ckpt after every epoch (Lightning's save_last writes it only when the monitored metric improves)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    report = TestReport(run_dir, cfg.logger.num_map_panels, _run_info(cfg, datamodule), started=started)
    callbacks = [last, checkpoint, HistoryWriter(run_dir / "history.csv"), report, Preemption(ckpt_dir / "last.ckpt")]
    trainer = build_trainer(cfg, run_dir, logger, callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(run.resume_from) if run.resume_from else None)

    test_ckpt = checkpoint.best_model_path or last.best_model_path or None
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
    """Evaluate a checkpoint with the config and seen anomalies of its run (plus `overrides` that do not change the
    data, unless evaluate_on_other_data=true); writes <run>/test-<time>-<suffix>/, or nothing when it fails."""
    if not cfg.ckpt or not Path(cfg.ckpt).is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt!r} is not a checkpoint file; pass ckpt=runs/.../checkpoints/best.ckpt")
    ckpt = Path(cfg.ckpt)
    module = PRNModule.from_checkpoint(ckpt)
    if module.run_config is None:
        raise CheckpointError(f"checkpoint {ckpt} holds no run config (it was not written by `prn train`); "
                              "`prn test` needs one to rebuild the test data")
    other_data = bool(cfg.get("evaluate_on_other_data", False))
    kept = [o for o in overrides if not o.startswith(("ckpt=", "run_dir=", "evaluate_on_other_data="))]
    run_cfg = OmegaConf.create(module.run_config)
    merged = apply_overrides(run_cfg, kept)
    check_evaluation_data(run_cfg, merged, other_data, ckpt)
    origin = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    out_dir = Path(cfg.run_dir) if cfg.run_dir else origin / f"test-{stamp}"
    created = not out_dir.exists()
    try:
        return _test(module, ckpt, _with_run_dir(merged, out_dir), out_dir, origin, run_cfg, other_data)
    except BaseException:
        if created and rank_zero_only.rank == 0:
            shutil.rmtree(out_dir, ignore_errors=True)  # a failed test leaves no half-made folder
        raise


def _test(module: PRNModule, ckpt: Path, merged: DictConfig, out_dir: Path, origin: Path, run_cfg: DictConfig,
          other_data: bool) -> dict[str, Any]:
    pl.seed_everything(merged.seed, workers=True)
    seen_list = origin / SEEN_LIST
    datamodule = PRNDataModule(merged.data, seed=merged.seed, run_dir=out_dir,
                               seen_list=seen_list if seen_list.is_file() or not other_data else None,
                               seen_list_root=run_cfg.data.root, other_data=other_data)
    datamodule.setup("test")
    if datamodule.defect_types != module.defect_types:  # another category (evaluate_on_other_data=true)
        module.defect_types = list(datamodule.defect_types)
        module.test_metrics = AnomalyMetrics(module.defect_types)
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
    return {"num_seen_anomalies": len(datamodule.seen_anomalies), "num_val_anomalies": len(datamodule.val_anomalies),
            "dataset": str(cfg.data.dataset),
            "category": str(cfg.data.category), "seed": int(cfg.seed)}


def _close_process_group() -> None:
    """Destroy the DDP process group once nothing else is collective: gloo's threads otherwise abort at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _with_run_dir(cfg: DictConfig, run_dir: Path) -> DictConfig:
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    return cfg
