"""Reader for any dataset laid out like MVTec AD (the `folder` dataset, and the base of the MVTec and BTAD adapters).

    ROOT/CATEGORY/train/good/*                         normal training images
    ROOT/CATEGORY/test/good/*                          normal test images
    ROOT/CATEGORY/test/DEFECT/*                        anomalous test images, one folder per defect type
    ROOT/CATEGORY/ground_truth/DEFECT/<stem>_mask.*    their masks (any image extension)

The normal folder name ("good") and the mask suffix ("_mask") are parameters so BTAD (`ok`, no suffix) reuses it.
Every defect image must have a mask: an image without one is an error, never silently treated as unlabelled.
"""
from __future__ import annotations

from pathlib import Path

from prn_lightning.data.sources.records import ANOMALOUS, GOOD, NORMAL, CategorySplits, Sample
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.io import IMAGE_EXTENSIONS, is_image_file, list_images

LAYOUT = ("ROOT/CATEGORY/train/good/*, ROOT/CATEGORY/test/{good,DEFECT}/*, "
          "ROOT/CATEGORY/ground_truth/DEFECT/<stem>_mask.png")
FOLDER_HINT = f"set data.root to a folder laid out as {LAYOUT} (e.g. data.root=../shared/data)"


def find_categories(root: str | Path) -> list[str]:
    """Sub-folders of `root` that look like a category (they hold a `train` or `Train` folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and any(c.is_dir() and c.name.lower() == "train" for c in p.iterdir()))


def check_category_dir(root: str | Path, category: str, hint: str = FOLDER_HINT) -> Path:
    """ROOT/CATEGORY, or a DatasetError naming the missing path, the categories that do exist, and `hint`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} (data.root) does not exist; {hint}")
    folder = root / str(category)
    if not folder.is_dir():
        found = find_categories(root)
        listing = ", ".join(found) if found else "(none)"
        raise DatasetError(f"category '{category}' (data.category) not found: {folder} does not exist; "
                           f"categories under {root}: {listing}; {hint}")
    return folder


def _require_dir(folder: Path, what: str, hint: str) -> Path:
    if not folder.is_dir():
        raise DatasetError(f"missing {what} folder {folder}; expected layout {LAYOUT}; {hint}")
    return folder


def _mask_index(gt_dir: Path) -> dict[str, Path]:
    """Mask file name without extension (lower-case) -> path, for one ground_truth/DEFECT folder."""
    if not gt_dir.is_dir():
        return {}
    return {p.stem.lower(): p for p in sorted(gt_dir.iterdir()) if p.is_file() and is_image_file(p)}


def read_folder_category(root: str | Path, category: str, *, dataset: str = "folder", normal_dir: str = GOOD,
                         mask_suffix: str = "_mask", is_texture: bool | None = None,
                         hint: str = FOLDER_HINT) -> CategorySplits:
    """All samples of ROOT/CATEGORY in MVTec layout, in sorted order; `hint` ends every error message."""
    folder = check_category_dir(root, category, hint)
    train_dir = _require_dir(folder / "train" / normal_dir, "training", hint)
    train = [Sample(p, None, NORMAL, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(f"no training images in {train_dir} (expected {', '.join(IMAGE_EXTENSIONS)} files); "
                           f"{hint}")

    test_dir = _require_dir(folder / "test", "test", hint)
    normal_test = _require_dir(test_dir / normal_dir, "normal test", hint)
    test = [Sample(p, None, NORMAL, GOOD) for p in list_images(normal_test)]
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != normal_dir)
    for defect_dir in defect_dirs:
        gt_dir = folder / "ground_truth" / defect_dir.name
        masks = _mask_index(gt_dir)
        for image in list_images(defect_dir):
            mask = masks.get(f"{image.stem}{mask_suffix}".lower())
            if mask is None:
                raise DatasetError(f"anomalous test image {image} has no mask: expected "
                                   f"{gt_dir / (image.stem + mask_suffix)}.png (or another image extension); "
                                   "add the mask or move the image out of the test split")
            test.append(Sample(image, mask, ANOMALOUS, defect_dir.name))
    if not any(s.label == NORMAL for s in test):
        raise DatasetError(f"no normal test images in {normal_test}; image-level metrics need some; {hint}")
    return CategorySplits(dataset=dataset, category=str(category), root=Path(root), train=train, test=test,
                          is_texture=is_texture)
