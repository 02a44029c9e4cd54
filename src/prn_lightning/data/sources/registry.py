"""One entry point from the `data` config section to the samples of one category.

`load_category` never downloads: a missing public dataset raises a DatasetError that names `prn download DATASET`
(the CLI and `make train` call `download.download_dataset` when the user asks for it). Only the embedded synthetic
dataset is created on the fly, because it is generated locally in seconds.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prn_lightning.data.sources import btad, dagm, ksdd2, mvtec, synthetic
from prn_lightning.data.sources.folder import find_categories, read_folder_category
from prn_lightning.data.sources.records import CategorySplits
from prn_lightning.errors import DatasetError

DATASETS: dict[str, list[str] | None] = {
    "synthetic": list(synthetic.CATEGORIES),
    "mvtec": list(mvtec.CATEGORIES),
    "btad": list(btad.CATEGORIES),
    "dagm": list(dagm.CATEGORIES),
    "ksdd2": list(ksdd2.CATEGORIES),
    "folder": None,  # any MVTec-layout root: its categories are the sub-folders holding train/
}


def _load_synthetic(root: Path, category: str) -> CategorySplits:
    if category not in synthetic.CATEGORIES:
        raise DatasetError(f"unknown synthetic category '{category}' (data.category); choose one of: "
                           f"{', '.join(synthetic.CATEGORIES)}")
    synthetic.ensure_synthetic(root)
    return read_folder_category(root, category, dataset="synthetic", is_texture=category == "texture")


LOADERS: dict[str, Callable[[Path, str], CategorySplits]] = {
    "synthetic": _load_synthetic,
    "mvtec": mvtec.load_mvtec,
    "btad": btad.load_btad,
    "dagm": dagm.load_dagm,
    "ksdd2": ksdd2.load_ksdd2,
    "folder": read_folder_category,
}


def _get(data_cfg: Any, key: str) -> Any:
    value = data_cfg.get(key) if hasattr(data_cfg, "get") else getattr(data_cfg, key, None)
    if value is None or value == "":
        raise DatasetError(f"config key data.{key} is not set")
    return value


def dataset_categories(name: str, root: str | Path | None = None) -> list[str]:
    """The categories of dataset `name`; for `folder`, the sub-folders of `root` that hold a train/ folder."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}' (data.dataset); choose one of: {', '.join(DATASETS)}")
    categories = DATASETS[name]
    if categories is None:
        return find_categories(root) if root is not None else []
    return list(categories)


def load_category(data_cfg: Any) -> CategorySplits:
    """All samples of `data.category` of `data.dataset` under `data.root` (train normals and the whole test split)."""
    name = str(_get(data_cfg, "dataset"))
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset '{name}' (data.dataset); choose one of: {', '.join(LOADERS)}")
    return LOADERS[name](Path(str(_get(data_cfg, "root"))), str(_get(data_cfg, "category")))
