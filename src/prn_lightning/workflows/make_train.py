"""What `make train` and `make sweep` run: pick the experiment for DATASET/CATEGORY, fetch data on first use.

`make train` -> the embedded synthetic dataset; `make train CATEGORY=carpet` -> MVTec AD carpet (downloaded into
data/ when missing); `DATASET=btad|dagm|ksdd2|folder|synthetic` selects another dataset; ARGS are dotlist overrides.
The CPU experiment is used without a GPU, the bundled-backbone GPU experiment with one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from prn_lightning.config import experiments_dir, load_config
from prn_lightning.data.sources.download import download_dataset
from prn_lightning.data.sources.registry import load_category
from prn_lightning.errors import DatasetError
from prn_lightning.workflows.run_dir import train_config
from prn_lightning.workflows.sweep import run_sweep
from prn_lightning.workflows.train import run_train

DOWNLOADABLE = ("mvtec", "btad", "dagm", "ksdd2")


def experiment_overrides(dataset: str, category: str, extra: list[str]) -> list[str]:
    """Overrides selecting the experiment for a dataset/category; explicit `experiment=` in `extra` wins."""
    dataset = dataset or ("mvtec" if category else "synthetic")
    variant = "gpu" if torch.cuda.is_available() else "cpu"
    overrides = [f"experiment={dataset}_{variant}"]
    if category:
        overrides.append(f"data.category='{category}'")  # quoted: BTAD's 01 stays a string
    return overrides + list(extra)


def ensure_dataset(overrides: list[str]) -> None:
    """Download a public dataset on first use (the same as `prn download DATASET`); a failure raises DatasetError."""
    cfg = load_config(overrides)
    if cfg.data.dataset not in DOWNLOADABLE:
        return
    try:
        load_category(cfg.data)
    except DatasetError:
        root = Path(cfg.data.root)
        print(f"{cfg.data.dataset} not found under {root}: downloading (see README 'Datasets' for the manual route)")
        download_dataset(str(cfg.data.dataset), root.parent, url=cfg.data.url or None, sha256=cfg.data.sha256 or None)


def run_make_train(dataset: str, category: str, extra: list[str], sweep: str | None = None) -> Path:
    """`make train` / `make sweep`: pick the experiment, fetch the dataset on first use, then train (or sweep)."""
    overrides = experiment_overrides(dataset.strip(), category.strip(), extra)
    ensure_dataset(overrides)
    if sweep:
        sweep_file = experiments_dir() / "sweeps" / f"{sweep}.yaml"
        run_sweep(sweep_file, overrides)
        return sweep_file
    return run_train(train_config(overrides))
