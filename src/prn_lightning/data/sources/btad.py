"""BTAD (beanTech Anomaly Detection): products 01, 02, 03 in an MVTec-like layout with `ok`/`ko` folders.

Native layout: `NN/train/ok/*`, `NN/test/{ok,ko}/*`, `NN/ground_truth/ko/<stem>.<ext>` (the mask has the image's
stem, no `_mask` suffix; images and masks are .bmp or .png depending on the product). BTAD has no defect subtypes:
every anomaly has defect type "ko".
"""
from __future__ import annotations

from pathlib import Path

from prn_lightning.data.sources.download_specs import BTAD, BTAD_CATEGORIES, fetch_hint
from prn_lightning.data.sources.folder import read_folder_category
from prn_lightning.data.sources.records import CategorySplits
from prn_lightning.errors import DatasetError

CATEGORIES = BTAD_CATEGORIES



def load_btad(root: str | Path, category: str | int) -> CategorySplits:
    """One BTAD product; foreground is estimated (is_texture None)."""
    category = f"{int(category):02d}" if str(category).isdigit() else str(category)  # YAML/CLI read 01 as 1
    if category not in CATEGORIES:
        raise DatasetError(f"unknown BTAD category '{category}' (data.category); choose one of: "
                           f"{', '.join(CATEGORIES)}")
    return read_folder_category(root, category, dataset="btad", normal_dir="ok", mask_suffix="",
                                hint=fetch_hint(BTAD, root))
