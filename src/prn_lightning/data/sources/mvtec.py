"""MVTec AD: 15 categories in the layout the generic folder reader expects (`good`, `<stem>_mask.png`)."""
from __future__ import annotations

from pathlib import Path

from prn_lightning.data.download import DownloadSpec, fetch_hint
from prn_lightning.data.errors import DatasetError
from prn_lightning.data.folder import read_folder_category
from prn_lightning.data.records import CategorySplits

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
              "tile", "toothbrush", "transistor", "wood", "zipper")
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")

DOWNLOAD = DownloadSpec(
    name="mvtec",
    url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
        "mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    archive="mvtec_anomaly_detection.tar.xz",
    expect=CATEGORIES,
    homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
)


def load_mvtec(root: str | Path, category: str) -> CategorySplits:
    """One MVTec AD category; texture categories are marked so the whole image counts as foreground."""
    if category not in CATEGORIES:
        raise DatasetError(f"unknown MVTec AD category '{category}' (data.category); choose one of: "
                           f"{', '.join(CATEGORIES)}")
    return read_folder_category(root, category, dataset="mvtec", is_texture=category in TEXTURES,
                                hint=fetch_hint(DOWNLOAD, root))
