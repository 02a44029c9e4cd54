"""`prn export` and the per-format inferencers: the exported graphs compute what PyTorch computes, on real images.

Real images come from ../shared/data (Kolektor) when present, the embedded synthetic set otherwise; features come
from the bundled ImageNet EfficientNet-Lite0, so the prototypes and the lookup work on real features. The tests run
onnxruntime and OpenVINO themselves (the `deploy` extra, which `make install` installs): they never skip.
"""
from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import prn_lightning
from conftest import shared_data_root
from prn_lightning.cli import main
from prn_lightning.config import load_config
from prn_lightning.data.sources.synthetic import ensure_synthetic, generate_synthetic
from prn_lightning.deploy import (
    EXPORT_FORMATS,
    ExportableModel,
    ExportError,
    ModelFileError,
    ModelMetadata,
    export_checkpoint,
    export_model,
    load_inferencer,
)
from prn_lightning.imaging.io import list_images
from prn_lightning.imaging.tensors import image_to_tensor, load_image
from prn_lightning.models.prn.backbone import FrozenBackbone
from prn_lightning.models.prn.lightning_module import PRNModule
from prn_lightning.models.prn.network import PRNNetwork
from prn_lightning.models.prn.prototypes import PrototypeBank
from prn_lightning.models.prn.scoring import anomaly_map, image_score
from prn_lightning.workflows.train import run_train

SIZE = 64
MAP_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    """(30 normal training images, 12 test images: normal and defective), RGB in [0, 1] at SIZE."""
    root = shared_data_root() / "kolektor"
    if not root.is_dir():
        synthetic = tmp_path_factory.mktemp("synthetic")
        ensure_synthetic(synthetic)
        root = synthetic / "texture"
    normals = list_images(root / "train" / "good")
    tests = sorted(p for folder in (root / "test").iterdir() for p in list_images(folder))

    def load(paths: list[Path]) -> torch.Tensor:
        return torch.stack([image_to_tensor(load_image(p, SIZE)) for p in paths])

    return load(normals[:30]), load(tests[:: max(1, len(tests) // 12)][:12])


def lite0_network(normals: torch.Tensor, lookup: str, **options) -> PRNNetwork:
    """A PRN network on the bundled ImageNet Lite0 with prototypes fitted on real normal images. The decoder's head
    bias is zeroed so the maps spread over (0, 1), where the sigmoid is steepest: the strictest place to compare."""
    torch.manual_seed(0)
    network = PRNNetwork(FrozenBackbone("tf_efficientnet_lite0", "bundled", (1, 2, 3, 4)), SIZE, msa_blocks=1,
                         **options)
    network.prototypes.fit(network.extract_prototype_features(normals.split(10)), ratio=0.2, iterations=10, seed=0)
    network.prototypes.lookup = lookup
    nn.init.zeros_(network.decoder.head.bias)
    return network.eval()


@pytest.fixture(scope="module")
def reference(real_images) -> PRNNetwork:
    """The checkpoint's path: FAISS lookup, PyTorch eager (tests copy it before exporting)."""
    return lite0_network(real_images[0], "faiss")


class NearestIds(nn.Module):
    """The in-graph lookup of one stage alone, so an exported graph's prototype choice can be read off."""

    def __init__(self, bank: PrototypeBank, stage: int) -> None:
        super().__init__()
        self.bank, self.stage = bank, stage

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bank.nearest_ids(self.stage, features)


def test_exported_lookup_picks_the_prototypes_faiss_picks_on_real_features(reference, real_images,
                                                                            tmp_path: Path) -> None:
    import onnxruntime as ort
    import openvino as ov

    normals, queries = real_images
    with torch.no_grad():
        features = reference.features(torch.cat([normals[25:], queries]))[:3]
    chosen = set()
    for stage, query in enumerate(features):
        faiss_ids = reference.prototypes.nearest_ids(stage, query).numpy()
        graph = NearestIds(copy.deepcopy(reference.prototypes), stage)
        graph.bank.lookup = "torch"
        path = tmp_path / f"stage{stage}.onnx"
        torch.onnx.export(graph, (query[:1],), str(path), dynamo=False, opset_version=17, input_names=["features"],
                          dynamic_axes={"features": {0: "batch"}})
        by_onnxruntime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"features": query.numpy()})[0]
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        by_openvino = compiled(query.numpy())[0]
        np.testing.assert_array_equal(by_onnxruntime, faiss_ids)
        np.testing.assert_array_equal(by_openvino, faiss_ids)
        chosen |= {(stage, int(i)) for i in faiss_ids}
    assert len(chosen) > 3  # a real choice among the prototypes, not one id everywhere


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_exported_model_equals_pytorch_on_real_images(fmt: str, reference, real_images, tmp_path: Path) -> None:
    _, queries = real_images
    with torch.no_grad():
        expected_maps = anomaly_map(reference(queries), 4.0)
        expected_scores = image_score(expected_maps, 100)
    assert expected_maps.std() > 0.02  # maps that vary: a wrong prototype or op would show
    ranked = expected_scores.sort().values
    threshold = float(ranked[5] + ranked[6]) / 2  # between two scores: half the images on each side
    metadata = ModelMetadata(image_size=(SIZE, SIZE), threshold=threshold, backbone="tf_efficientnet_lite0",
                             num_seen_anomalies=0, topk=100, map_smoothing_sigma=4.0,
                             prototypes_per_stage=reference.prototypes.counts(), version=prn_lightning.__version__)

    path = export_model(ExportableModel(copy.deepcopy(reference), 100, 4.0), metadata, fmt, tmp_path / fmt)
    inferencer = load_inferencer(path)
    maps, scores = inferencer.predict(queries.numpy())
    assert maps.shape == (len(queries), SIZE, SIZE) and scores.shape == (len(queries),)
    assert np.abs(maps - expected_maps.numpy()).max() <= MAP_TOLERANCE
    assert np.abs(scores - expected_scores.numpy()).max() <= MAP_TOLERANCE
    decisions = scores >= inferencer.metadata.threshold
    np.testing.assert_array_equal(decisions, expected_scores.numpy() >= threshold)
    assert decisions.sum() == 6
    # the batch axis is dynamic: one image alone gives the same answer as inside the batch
    single_map, single_score = inferencer.predict(queries[3:4].numpy())
    assert np.abs(single_map[0] - maps[3]).max() <= MAP_TOLERANCE and abs(single_score[0] - scores[3]) <= 1e-5


@pytest.mark.parametrize("options", [{"prototype_match": "location", "prototype_neighbourhood": 1},
                                     {"msa_logit_scale": "sqrt_token_dim"}], ids=["location-match", "sqrt-scale"])
def test_other_settings_export_too(options: dict, real_images, tmp_path: Path) -> None:
    """model.prototype_match=location (nearest prototype vector per position, in a window) and
    model.msa_logit_scale=sqrt_token_dim export as well."""
    normals, queries = real_images
    network = lite0_network(normals, "torch", **options)
    with torch.no_grad():
        expected_maps = anomaly_map(network(queries), 0.0)
    metadata = ModelMetadata(image_size=(SIZE, SIZE), threshold=0.5, backbone="tf_efficientnet_lite0",
                             num_seen_anomalies=0, topk=100, map_smoothing_sigma=0.0,
                             prototypes_per_stage=network.prototypes.counts(), version=prn_lightning.__version__)
    path = export_model(ExportableModel(network, 100, 0.0), metadata, "onnx", tmp_path)
    maps, _ = load_inferencer(path).predict(queries.numpy())
    assert np.abs(maps - expected_maps.numpy()).max() <= MAP_TOLERANCE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a tiny real training run (64 px, 2 steps, bundled Lite0, 2 seen anomalies, no W&B)."""
    root = tmp_path_factory.mktemp("export")
    generate_synthetic(root / "data", seed=0, image_size=SIZE, num_train=8, num_test_good=3, num_per_defect=2,
                       categories=("texture",))
    cfg = load_config(["data=folder", f"data.root={root / 'data'}", "data.category=texture",
                       f"data.image_size={SIZE}", "data.num_seen_anomalies=2", "data.batch_size=4",
                       "data.eval_batch_size=8", "data.num_workers=0", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                       "trainer.enable_progress_bar=false", "logger=none", "model.msa_blocks=1",
                       f"run_dir={root / 'run'}"])
    return run_train(cfg) / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`prn export` of the checkpoint in every format: format -> output folder."""
    root = tmp_path_factory.mktemp("exported")
    for fmt in EXPORT_FORMATS:
        assert main(["export", f"ckpt={checkpoint}", f"format={fmt}", f"out={root / fmt}"]) == 0
    return {fmt: root / fmt for fmt in EXPORT_FORMATS}


def test_prn_export_writes_each_format_and_its_metadata(checkpoint: Path, exported, real_images) -> None:
    _, queries = real_images
    images = queries.numpy()
    expected_maps, expected_scores = load_inferencer(checkpoint, device="cpu").predict(images)
    module = PRNModule.from_checkpoint(checkpoint)
    for fmt, out in exported.items():
        metadata = json.loads((out / "metadata.json").read_text())
        assert metadata["image_size"] == [SIZE, SIZE] and metadata["format"] == fmt
        assert metadata["threshold"] == float(module.image_threshold)
        assert metadata["backbone"] == "tf_efficientnet_lite0" and metadata["num_seen_anomalies"] == 2
        assert metadata["version"] == prn_lightning.__version__ and metadata["resize"] == "squash"
        assert metadata["prototypes_per_stage"] == module.network.prototypes.counts()
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["metadata.json", metadata["model_file"]] + (["model.bin"] if fmt == "openvino" else []))
        inferencer = load_inferencer(out)  # the folder: its metadata names the model file
        maps, scores = inferencer.predict(images)
        assert np.abs(maps - expected_maps).max() <= MAP_TOLERANCE
        np.testing.assert_array_equal(scores >= metadata["threshold"], expected_scores >= metadata["threshold"])


def copy_test_images(checkpoint: Path, folder: Path, count: int) -> Path:
    """The first `count` Kolektor test images (the checkpoint's synthetic test set without ../shared), copied at
    their own sizes into `folder` as <defect>_<name>."""
    root = shared_data_root() / "kolektor"
    source = root / "test" if root.is_dir() else checkpoint.parents[2] / "data" / "texture" / "test"
    folder.mkdir()
    for path in sorted(p for sub in source.iterdir() for p in list_images(sub))[:count]:
        (folder / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    return folder


def test_prn_predict_writes_the_same_scores_and_overlays_for_every_format(checkpoint: Path, exported,
                                                                          tmp_path: Path) -> None:
    images = copy_test_images(checkpoint, tmp_path / "images", 6)

    def predict(source_arg: str, name: str) -> list[dict]:
        assert main(["predict", source_arg, f"input={images}", f"out={tmp_path / name}"]) == 0
        with (tmp_path / name / "scores.csv").open() as handle:
            return list(csv.DictReader(handle))

    expected = predict(f"ckpt={checkpoint}", "checkpoint")
    for fmt, out in exported.items():
        rows = predict(f"model={out / json.loads((out / 'metadata.json').read_text())['model_file']}", fmt)
        assert len(rows) == len(expected) == 6
        for row, by_checkpoint in zip(rows, expected):
            assert abs(float(row["score"]) - float(by_checkpoint["score"])) <= MAP_TOLERANCE
            for column in ("image_path", "threshold", "is_anomalous", "width", "height"):
                assert row[column] == by_checkpoint[column]
            with Image.open(row["overlay"]) as overlay, Image.open(by_checkpoint["overlay"]) as checkpoint_overlay:
                ours, theirs = np.asarray(overlay), np.asarray(checkpoint_overlay)
            assert ours.shape == theirs.shape
            assert np.mean(ours != theirs) < 1e-3  # a colour-map step or contour pixel may flip at 1e-7


def test_export_mistakes_are_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ExportError, match="format='tflite' is not one of onnx, openvino, torchscript"):
        export_checkpoint(checkpoint, "tflite", tmp_path / "out")
    assert main(["export", f"ckpt={tmp_path / 'missing.ckpt'}", "format=onnx", f"out={tmp_path / 'out'}"]) == 2
    assert main(["export", f"ckpt={checkpoint}", "format=onnx"]) == 2
    assert main(["predict", f"ckpt={checkpoint}", f"model={checkpoint}", f"input={tmp_path}", "out=x"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("error: checkpoint") and "missing.ckpt" in errors[0]
    assert errors[1] == "error: prn export needs ckpt=PATH format=onnx|openvino|torchscript out=DIR"
    assert errors[2].startswith("error: prn predict needs one of ckpt=PATH or model=DIR/model.onnx")
    with pytest.raises(FileNotFoundError, match="nothing-here does not exist"):
        load_inferencer(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="metadata.json is missing"):
        load_inferencer(tmp_path / "empty")


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "onnxruntime_predict.py"


def test_readme_onnxruntime_example_runs_without_this_package(checkpoint: Path, exported, tmp_path: Path) -> None:
    """The README's ten-line onnxruntime script (examples/, quoted verbatim) scores like `prn predict`, with
    prn_lightning made unimportable in its process."""
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    code = EXAMPLE.read_text()
    assert code.split('"""', 2)[2].strip() in readme
    folder = copy_test_images(checkpoint, tmp_path / "images", 4)
    images = sorted(folder.iterdir())
    runner = ("import runpy, sys; sys.modules['prn_lightning'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", runner, str(EXAMPLE), str(exported["onnx"]), *map(str, images)],
                            capture_output=True, text=True, check=True)
    printed = [line.rsplit(" ", 2) for line in result.stdout.strip().splitlines()]
    assert main(["predict", f"ckpt={checkpoint}", f"input={folder}", f"out={tmp_path / 'pred'}"]) == 0
    with (tmp_path / "pred" / "scores.csv").open() as handle:
        by_checkpoint = {Path(row["image_path"]).name: row for row in csv.DictReader(handle)}
    assert [Path(p).name for p, _, _ in printed] == [p.name for p in images]
    for path, score, decision in printed:
        row = by_checkpoint[Path(path).name]
        assert abs(float(score) - float(row["score"])) <= MAP_TOLERANCE
        assert (decision == "anomalous") == (row["is_anomalous"] in ("1", "True", "true"))


def test_openvino_precision_is_a_predict_option(checkpoint: Path, exported, real_images, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """predict.openvino_precision reaches the OpenVINO plugin (bf16: faster where the CPU has it, maps within 1e-2);
    a value it does not know is one line."""
    _, queries = real_images
    xml = exported["openvino"] / "model.xml"
    exact = load_inferencer(xml)
    exact_maps, _ = exact.predict(queries.numpy())
    fast = load_inferencer(xml, openvino_precision="bf16")
    import openvino

    def hint(inferencer) -> str:
        return inferencer.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    # The plugin honours bf16 wherever the CPU lists BF16, and also on some AVX-512 CPUs that do not list it (an Intel
    # Xeon Skylake-SP here); elsewhere it falls back to f32. The default inferencer stays f32 on every CPU.
    assert hint(exact) == "f32"
    has_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert hint(fast) in (("bf16",) if has_bf16 else ("bf16", "f32"))
    fast_maps, _ = fast.predict(queries.numpy())
    assert np.abs(fast_maps - exact_maps).max() <= 1e-2
    assert main(["predict", f"model={xml}", f"input={tmp_path}", f"out={tmp_path / 'o'}",
                 "predict.openvino_precision=int8"]) == 2
    assert "predict.openvino_precision" in capsys.readouterr().err
