"""`prn predict` on a real (tiny) checkpoint: any image size or format in, scores.csv and full-size overlays out."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from prn_lightning.config import load_config
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.errors import DatasetError
from prn_lightning.imaging.tensors import image_to_tensor, resize_image
from prn_lightning.models.prn.lightning_module import PRNModule
from prn_lightning.workflows.predict import NoImagesError, run_predict
from prn_lightning.workflows.train import run_train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a tiny real training run (64 px, 2 steps, random backbone, no W&B)."""
    root = tmp_path_factory.mktemp("predict")
    generate_synthetic(root / "data", seed=0, image_size=64, num_train=8, num_test_good=3, num_per_defect=2,
                       categories=("texture",))
    cfg = load_config(["data=folder", f"data.root={root / 'data'}", "data.category=texture", "data.image_size=64",
                       "data.num_seen_anomalies=2", "data.batch_size=4", "data.eval_batch_size=8",
                       "data.num_workers=0", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "logger=none",
                       "model.backbone.weights=none", "model.msa_blocks=1",
                       f"run_dir={root / 'run'}"])
    return run_train(cfg) / "checkpoints" / "best.ckpt"


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Colour PNG, JPEG, a grayscale PNG and a BMP in a subfolder, all of different sizes, plus a non-image file."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)).save(folder / "a.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (40, 41), dtype=np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (130, 90, 3), dtype=np.uint8)).save(folder / "nested" / "big.bmp")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_scores_and_overlays_at_each_original_size(checkpoint: Path, mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    csv_path = run_predict(checkpoint, mixed_folder, out, batch_size=3)
    assert csv_path == out / "scores.csv"
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["image_path"]).relative_to(mixed_folder).as_posix() for r in rows] == [
        "a.jpg", "a.png", "gray.png", "nested/big.bmp"]
    assert [(int(r["width"]), int(r["height"])) for r in rows] == [(64, 96), (70, 50), (41, 40), (90, 130)]

    module = PRNModule.from_checkpoint(checkpoint).eval()
    threshold = float(module.image_threshold)
    for row in rows:
        assert float(row["threshold"]) == pytest.approx(threshold, abs=1e-6)
        assert row["is_anomalous"] == str(float(row["score"]) >= float(row["threshold"]))
        with Image.open(row["overlay"]) as overlay:  # input | heat-map overlay | contour, each at the original size
            assert overlay.size == (3 * int(row["width"]), int(row["height"])) and overlay.mode == "RGB"
    assert {Path(r["overlay"]).relative_to(out / "overlays").as_posix() for r in rows} == {
        "a_jpg.png", "a_png.png", "gray.png", "nested/big.png"}

    # the score is the model's score of the image prepared as evaluation prepares it (batching changes nothing)
    gray = cv2.imread(str(mixed_folder / "gray.png"), cv2.IMREAD_COLOR)[..., ::-1]
    with torch.no_grad():
        _, score = module.predict_images(image_to_tensor(resize_image(gray, 64))[None])
    assert float(rows[2]["score"]) == pytest.approx(float(score[0]), abs=1e-5)
    # the left panel is the untouched input
    with Image.open(rows[1]["overlay"]) as overlay, Image.open(mixed_folder / "a.png") as original:
        assert np.array_equal(np.asarray(overlay)[:, :70], np.asarray(original))

    # predicting again into an output folder inside the input folder does not score its own overlays
    again = run_predict(checkpoint, mixed_folder, mixed_folder / "predictions")
    assert len(again.read_text().splitlines()) == 1 + 4


def test_inputs_without_images_or_with_broken_files_are_named(checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("no images here")
    with pytest.raises(NoImagesError, match=re.escape(str(empty))):
        run_predict(checkpoint, empty, tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fine.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    (broken / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    # an unreadable file is skipped and listed with its reason; the readable ones are scored
    with (run_predict(checkpoint, broken, tmp_path / "out")).open() as handle:
        rows = {Path(r["image_path"]).name: r for r in csv.DictReader(handle)}
    assert rows["fine.png"]["score"] and rows["fine.png"]["error"] == ""
    assert rows["truncated.png"]["score"] == "" and str(broken / "truncated.png") in rows["truncated.png"]["error"]
    (broken / "fine.png").unlink()  # nothing readable left: an error, with scores.csv listing why
    with pytest.raises(DatasetError, match="none of the 1 images"):
        run_predict(checkpoint, broken, tmp_path / "out2")
    assert "truncated.png" in (tmp_path / "out2" / "scores.csv").read_text()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        run_predict(tmp_path / "missing.ckpt", broken, tmp_path / "out")
