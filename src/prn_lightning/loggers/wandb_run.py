"""Weights & Biases: online when an API key is configured, offline (synced later with `wandb sync`) otherwise."""
from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from prn_lightning.data.sources.records import Sample
from prn_lightning.errors import ConfigError


def wandb_api_key_configured() -> bool:
    """True when WANDB_API_KEY is set or `wandb login` stored a key in ~/.netrc (no network needed)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """`auto` -> `online` with an API key, else `offline`; an explicit WANDB_MODE in the environment wins."""
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_api_key_configured() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode={mode!r} must be one of auto, online, offline, disabled")
    return mode


def make_wandb_logger(cfg: DictConfig, run_dir: Path, job_type: str = "train") -> WandbLogger | None:
    """The run's WandbLogger writing under `run_dir/wandb`, or None when `logger=none`."""
    if cfg.logger.name == "none":
        return None
    if cfg.logger.name != "wandb":
        raise ConfigError(f"logger.name={cfg.logger.name!r} must be wandb or none (choose with logger=wandb|none)")
    mode = resolve_wandb_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_CACHE_DIR", str(run_dir / "wandb" / ".cache"))
    os.environ.setdefault("WANDB_DATA_DIR", str(run_dir / "wandb" / ".data"))
    os.environ.setdefault("WANDB_SILENT", "true")
    name = f"{cfg.data.dataset}-{cfg.data.category}-{run_dir.name}"
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        tags=list(cfg.logger.tags) + [cfg.data.dataset, str(cfg.data.category)],
        name=name,
        save_dir=str(run_dir),
        offline=mode == "offline",
        job_type=job_type,
        group=f"{cfg.data.dataset}-{cfg.data.category}",
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def log_seen_anomalies(logger: WandbLogger | None, seen: Sequence[Sample]) -> None:
    """The seen anomalies (moved from the test set into training) as a W&B table, when there is a logger."""
    if logger is not None and seen:
        logger.log_table("seen_anomalies", columns=["image_path", "defect_type"],
                         data=[[str(s.image_path), s.defect_type] for s in seen])
