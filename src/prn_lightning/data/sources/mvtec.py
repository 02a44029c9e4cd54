"""MVTec AD: 15 categories in the layout the generic folder reader expects (`good`, `<stem>_mask.png`)."""
from __future__ import annotations

from pathlib import Path

from prn_lightning.data.sources.download_specs import MVTEC, MVTEC_CATEGORIES, fetch_hint
from prn_lightning.data.sources.folder import read_folder_category
from prn_lightning.data.sources.records import CategorySplits
from prn_lightning.errors import DatasetError

CATEGORIES = MVTEC_CATEGORIES
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")



def load_mvtec(root: str | Path, category: str) -> CategorySplits:
    """One MVTec AD category; texture categories are marked so the whole image counts as foreground."""
    if category not in CATEGORIES:
        raise DatasetError(f"unknown MVTec AD category '{category}' (data.category); choose one of: "
                           f"{', '.join(CATEGORIES)}")
    return read_folder_category(root, category, dataset="mvtec", is_texture=category in TEXTURES,
                                hint=fetch_hint(MVTEC, root))
