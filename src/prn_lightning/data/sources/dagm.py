"""DAGM 2007: ten synthetic texture classes (Class1..Class10) with coarse elliptical defect labels.

Native layout per class: `ClassN/{Train,Test}/NNNN.PNG`, `ClassN/{Train,Test}/Label/NNNN_label.PNG` and
`ClassN/{Train,Test}/Label/Labels.txt`, whose rows read `index flag image 0 label` (flag 1: defective, label: the
mask file; a lone first line is a header). Normals for training are the Train images flagged 0; the defective Train
images are not used (the seen anomalies come from the test split, like every other dataset). Labels are ellipses
that over-cover the defect, so pixel metrics on DAGM are coarse by construction. All classes are textures.
"""
from __future__ import annotations

from pathlib import Path

from prn_lightning.data.sources.download_specs import DAGM, fetch_hint
from prn_lightning.data.sources.folder import check_category_dir
from prn_lightning.data.sources.records import ANOMALOUS, GOOD, NORMAL, CategorySplits, Sample
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.io import IMAGE_EXTENSIONS

CATEGORIES = tuple(f"Class{i}" for i in range(1, 11))
DEFECT = "defect"



def _read_labels(split_dir: Path) -> list[tuple[str, bool, str | None]]:
    """(image file, defective, mask file or None) for every row of `split_dir/Label/Labels.txt`."""
    labels = split_dir / "Label" / "Labels.txt"
    if not labels.is_file():
        raise DatasetError(f"missing {labels}: DAGM lists every image and its label file there; the folder does "
                           "not have the DAGM layout (ClassN/{Train,Test}/Label/Labels.txt)")
    rows = []
    for number, line in enumerate(labels.read_text().splitlines(), start=1):
        fields = line.split()
        if len(fields) < 5:  # the header line (a lone count) or a blank line
            continue
        _, flag, image, _, mask = fields[:5]
        if flag not in ("0", "1") or Path(image).suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(f"{labels} line {number} is not `index flag image 0 label`: {line.strip()!r}")
        rows.append((image, flag == "1", mask if flag == "1" else None))
    return rows


def _split_samples(split_dir: Path) -> list[Sample]:
    if not split_dir.is_dir():
        raise DatasetError(f"missing DAGM folder {split_dir} (expected ClassN/Train and ClassN/Test)")
    samples = []
    for image, defective, mask in sorted(_read_labels(split_dir)):
        image_path, mask_path = split_dir / image, split_dir / "Label" / mask if mask else None
        if not image_path.is_file():
            raise DatasetError(f"{split_dir / 'Label' / 'Labels.txt'} lists {image} but {image_path} does not exist")
        if mask_path is not None and not mask_path.is_file():
            raise DatasetError(f"defective image {image_path} has no label: expected {mask_path}")
        samples.append(Sample(image_path, mask_path, ANOMALOUS, DEFECT) if defective
                       else Sample(image_path, None, NORMAL, GOOD))
    return samples


def load_dagm(root: str | Path, category: str) -> CategorySplits:
    """One DAGM class: normal Train images for training, the whole Test split for testing."""
    if category not in CATEGORIES:
        raise DatasetError(f"unknown DAGM category '{category}' (data.category); choose one of: "
                           f"{', '.join(CATEGORIES)}")
    folder = check_category_dir(root, category, fetch_hint(DAGM, root))
    train = [s for s in _split_samples(folder / "Train") if s.label == NORMAL]
    if not train:
        raise DatasetError(f"no normal training images listed in {folder / 'Train' / 'Label' / 'Labels.txt'}")
    return CategorySplits(dataset="dagm", category=category, root=Path(root), train=train,
                          test=_split_samples(folder / "Test"), is_texture=True)
