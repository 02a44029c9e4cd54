"""What `make train` and `make sweep` run: pick the experiment for DATASET/CATEGORY, fetch data on first use.

`make train` -> the embedded synthetic dataset; `make train CATEGORY=carpet` -> MVTec AD carpet (downloaded into
data/ when missing); `DATASET=btad|dagm|ksdd2|folder|synthetic` selects another dataset; ARGS are dotlist overrides.
The CPU experiment is used without a GPU, the bundled-backbone GPU experiment with one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from prn_lightning.cli import main as prn_main
from prn_lightning.config import experiments_dir, load_config
from prn_lightning.data.errors import DatasetError
from prn_lightning.data.registry import load_category

DOWNLOADABLE = ("mvtec", "btad", "dagm", "ksdd2")


def experiment_overrides(dataset: str, category: str, extra: list[str]) -> list[str]:
    """Overrides selecting the experiment for a dataset/category; explicit `experiment=` in `extra` wins."""
    dataset = dataset or ("mvtec" if category else "synthetic")
    variant = "gpu" if torch.cuda.is_available() else "cpu"
    overrides = [f"experiment={dataset}_{variant}"]
    if category:
        overrides.append(f"data.category='{category}'")  # quoted: BTAD's 01 stays a string
    return overrides + list(extra)


def ensure_dataset(overrides: list[str]) -> int:
    """Download a public dataset on first use (the same as `prn download DATASET`); returns an exit code."""
    cfg = load_config(overrides)
    if cfg.data.dataset not in DOWNLOADABLE:
        return 0
    try:
        load_category(cfg.data)
        return 0
    except DatasetError:
        root = Path(cfg.data.root)
        print(f"{cfg.data.dataset} not found under {root}: downloading (see README 'Datasets' for the manual route)")
        return prn_main(["download", str(cfg.data.dataset), "--data-dir", str(root.parent)]
                        + (["--url", cfg.data.url] if cfg.data.url else [])
                        + (["--sha256", cfg.data.sha256] if cfg.data.sha256 else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make train")
    parser.add_argument("--sweep", default=None, help="sweep name under experiments/sweeps/")
    parser.add_argument("dataset", nargs="?", default="")
    parser.add_argument("category", nargs="?", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    overrides = experiment_overrides(args.dataset.strip(), args.category.strip(), args.overrides)
    try:
        code = ensure_dataset(overrides)
    except (DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if code:
        return code
    if args.sweep:
        sweep_file = experiments_dir() / "sweeps" / f"{args.sweep}.yaml"
        return prn_main(["sweep", str(sweep_file), *overrides])
    return prn_main(["train", *overrides])


if __name__ == "__main__":
    sys.exit(main())
