"""`prn predict`: anomaly maps, image scores and verdicts for new images, with a checkpoint or an exported model.

Every format runs through one inferencer (deploy.inferencers): a checkpoint or TorchScript file in PyTorch, ONNX in
ONNX Runtime, OpenVINO IR in OpenVINO, so scores.csv and the overlays are the same whatever the format. Images of any
size are resized to the model's input size exactly as the run's evaluation images were (imaging.tensors, the run's
data.resize), scored in [0, 1] (the model normalises its own input), and their maps brought back to each image's own
size (padding cut, bilinear), so overlays line up with the original pixels. The verdict uses the threshold stored
with the model, which was chosen on the validation split (never on test images).
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from prn_lightning.deploy.inferencers import load_inferencer
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.io import IMAGE_EXTENSIONS, ImageReadError, is_image_file, read_image
from prn_lightning.imaging.tensors import image_to_tensor, map_to_image, resize_image

OVERLAY_ALPHA = 0.5
CONTOUR_COLOUR = (255, 0, 0)  # RGB


class NoImagesError(FileNotFoundError):
    """The prediction input holds no image; the message names the path and the extensions looked for."""


def find_images(input_path: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """One image file, or every image below a folder (recursive, sorted, nothing under `exclude`, e.g. the output
    folder of an earlier prediction); a clear error when there is none."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise FileNotFoundError(f"prediction input {input_path} does not exist; pass an image file or a folder")
    if input_path.is_file():
        if not is_image_file(input_path):
            raise NoImagesError(f"prediction input {input_path} is not an image file "
                                f"(expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [input_path]
    skipped = Path(exclude).resolve() if exclude is not None else None
    images = sorted(p for p in input_path.rglob("*") if p.is_file() and is_image_file(p)
                    and (skipped is None or skipped not in p.resolve().parents))
    if not images:
        raise NoImagesError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {input_path} or its subfolders")
    return images


def render_overlay(image: np.ndarray, amap: np.ndarray, score: float, threshold: float) -> np.ndarray:
    """Input | heat-map overlay | contour of the region at or above the threshold, side by side (H, 3W, 3)."""
    height, width = image.shape[:2]
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(amap, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    overlay = cv2.addWeighted(image, 1 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0)
    outlined = image.copy()
    region = (amap >= threshold).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(height, width) / 256))
    cv2.drawContours(outlined, contours, -1, CONTOUR_COLOUR, thickness)
    verdict = "anomalous" if score >= threshold else "normal"
    scale = max(0.3, min(height, width) / 600)
    cv2.putText(outlined, f"{score:.3f} {verdict}", (4, max(10, int(22 * scale))), cv2.FONT_HERSHEY_SIMPLEX, scale,
                CONTOUR_COLOUR, max(1, round(scale * 2)), cv2.LINE_AA)
    return np.concatenate([image, overlay, outlined], axis=1)


def _overlay_names(images: list[Path], root: Path) -> list[Path]:
    """Overlay paths mirroring the input tree; `a.png` and `a.jpg` in one folder keep apart as a_png / a_jpg."""
    relative = [p.relative_to(root) if root.is_dir() else Path(p.name) for p in images]
    plain = [r.with_suffix(".png") for r in relative]
    clashes = {name for name, count in Counter(plain).items() if count > 1}
    return [r.parent / f"{r.stem}_{r.suffix[1:].lower()}.png" if name in clashes else name
            for r, name in zip(relative, plain)]


def run_predict(
    model: str | Path, input_path: str | Path, out_dir: str | Path, batch_size: int = 8, device: str | None = None,
    openvino_precision: str = "f32",
) -> Path:
    """Score every image under `input_path` with `model` (a checkpoint, or a model file or folder written by
    `prn export`); writes `out_dir/scores.csv` and `out_dir/overlays/*.png`.

    CSV columns: image_path, score, threshold, is_anomalous (score >= threshold), width, height, overlay, error.
    An image that cannot be read is skipped and listed with the reason in `error` (its other columns empty); only
    when no image can be read does the call fail (after writing scores.csv). `openvino_precision` is the OpenVINO
    CPU plugin's inference precision for an .xml model (f32, bf16, f16, or default: the plugin's own choice).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    inferencer = load_inferencer(model, device, openvino_precision)
    out_dir = Path(out_dir)
    images = find_images(input_path, exclude=out_dir)
    overlay_paths = {image: out_dir / "overlays" / name
                     for image, name in zip(images, _overlay_names(images, Path(input_path)))}
    size, resize = inferencer.metadata.image_size, inferencer.metadata.resize  # as the run's images were
    threshold = inferencer.metadata.threshold

    rows, errors = {}, {}
    for start in range(0, len(images), batch_size):
        paths, pictures = [], []
        for path in images[start:start + batch_size]:
            try:
                pictures.append(read_image(path))
                paths.append(path)
            except ImageReadError as err:  # one bad file does not stop the others
                errors[path] = str(err)
        if not paths:
            continue
        batch = np.stack([image_to_tensor(resize_image(p, size, resize)).numpy() for p in pictures])
        maps, scores = inferencer.predict(batch)
        for path, picture, amap, score in zip(paths, pictures, maps, scores.tolist()):
            height, width = picture.shape[:2]
            full_map = map_to_image(amap, height, width, resize)
            overlay_path = overlay_paths[path]
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_overlay(picture, full_map, score, threshold)).save(overlay_path)
            rows[path] = [str(path), f"{score:.6f}", f"{threshold:.6f}", score >= threshold, width, height,
                          str(overlay_path), ""]

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "scores.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "score", "threshold", "is_anomalous", "width", "height", "overlay", "error"])
        writer.writerows(rows.get(p) or [str(p), "", "", "", "", "", "", errors[p]] for p in images)
    if not rows:
        raise DatasetError(f"none of the {len(images)} images under {input_path} could be read (reasons in "
                           f"{csv_path}), e.g. {next(iter(errors.values()))}")
    skipped = f"; {len(errors)} unreadable, skipped (see the error column)" if errors else ""
    print(f"{sum(r[3] for r in rows.values())} of {len(rows)} images flagged anomalous "
          f"(threshold {threshold:.4f}){skipped}")
    return csv_path
