"""KolektorSDD2: one category of electrical-commutator surfaces, a `train` and a `test` folder of PNG pairs.

Native layout: `ROOT/{train,test}/NNNNN.png` with `NNNNN_GT.png`; an image is defective when its GT mask is
non-empty. KSDD2 has no defect subtypes, so every anomaly has defect type "defect". Training normals are the train
images with an empty mask; the defective train images are not used (seen anomalies are drawn from the test split,
like every other dataset). Files that do not follow the `NNNNN.png` / `NNNNN_GT.png` naming (e.g. a stray
`NNNNN (copy).png` duplicate) are skipped with a warning that names them.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from prn_lightning.data.sources.download_specs import KSDD2, fetch_hint
from prn_lightning.data.sources.records import ANOMALOUS, GOOD, NORMAL, CategorySplits, Sample
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.io import read_mask

CATEGORIES = ("ksdd2",)
DEFECT = "defect"
_IMAGE = re.compile(r"^\d+\.png$", re.IGNORECASE)
_MASK = re.compile(r"^\d+_GT\.png$", re.IGNORECASE)



def _split_samples(split_dir: Path) -> list[Sample]:
    names = sorted(p.name for p in split_dir.iterdir() if p.is_file())
    stray = [n for n in names if not (_IMAGE.match(n) or _MASK.match(n))]
    if stray:
        warnings.warn(f"KSDD2: skipping {len(stray)} file(s) in {split_dir} not named NNNNN.png / NNNNN_GT.png: "
                      f"{', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}", stacklevel=3)
    samples = []
    for name in filter(_IMAGE.match, names):
        image = split_dir / name
        mask = split_dir / f"{image.stem}_GT{image.suffix}"
        if not mask.is_file():
            raise DatasetError(f"KSDD2 image {image} has no mask: expected {mask}")
        samples.append(Sample(image, None, NORMAL, GOOD) if not read_mask(mask).any()
                       else Sample(image, mask, ANOMALOUS, DEFECT))
    return samples


def load_ksdd2(root: str | Path, category: str = "ksdd2") -> CategorySplits:
    """KSDD2 at `root` (holding train/ and test/): empty-mask train images for training, the test split for test."""
    root = Path(root)
    if category not in CATEGORIES:
        raise DatasetError(f"unknown KSDD2 category '{category}' (data.category); KSDD2 has one: ksdd2")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            what = "dataset root" if not root.is_dir() else "folder"
            raise DatasetError(f"KSDD2 {what} {root / split if root.is_dir() else root} (data.root) does not "
                               f"exist; data.root must hold train/ and test/; {fetch_hint(KSDD2, root)}")
    train = [s for s in _split_samples(root / "train") if s.label == NORMAL]
    if not train:
        raise DatasetError(f"no normal (empty-mask) training images in {root / 'train'}")
    return CategorySplits(dataset="ksdd2", category=category, root=root, train=train,
                          test=_split_samples(root / "test"), is_texture=None)
