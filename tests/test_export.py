"""`prn export` and the per-format inferencers: the exported graphs compute what PyTorch computes, on real images.

Real images come from ../shared/data (Kolektor) when present, the embedded synthetic set otherwise; features come
from the bundled ImageNet EfficientNet-Lite0, so the prototypes and the lookup work on real features. The tests run
onnxruntime and OpenVINO themselves (the `deploy` extra, which `make install` installs): they never skip.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
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


class NearestIds(nn.Module):
    """The in-graph lookup of one stage alone, so an exported graph's prototype choice can be read off."""

    def __init__(self, bank: PrototypeBank, stage: int) -> None:
        super().__init__()
        self.bank, self.stage = bank, stage

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bank.nearest_ids(self.stage, features)


def test_exported_lookup_picks_the_prototypes_faiss_picks_on_real_features(real_images, tmp_path: Path) -> None:
    import onnxruntime as ort
    import openvino as ov

    normals, queries = real_images
    network = lite0_network(normals, "faiss")
    with torch.no_grad():
        features = network.features(torch.cat([normals[25:], queries]))[:3]
    chosen = set()
    for stage, query in enumerate(features):
        faiss_ids = network.prototypes.nearest_ids(stage, query).numpy()
        graph = NearestIds(copy.deepcopy(network.prototypes), stage)
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
def test_exported_model_equals_pytorch_on_real_images(fmt: str, real_images, tmp_path: Path) -> None:
    normals, queries = real_images
    reference = lite0_network(normals, "faiss")  # the checkpoint's path: FAISS lookup, PyTorch eager
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


def test_location_matching_exports_too(real_images, tmp_path: Path) -> None:
    """model.prototype_match=location (nearest prototype vector per position, in a window) is tensor ops as well."""
    normals, queries = real_images
    network = lite0_network(normals, "torch", prototype_match="location", prototype_neighbourhood=1)
    with torch.no_grad():
        expected_maps = anomaly_map(network(queries), 0.0)
    metadata = ModelMetadata(image_size=(SIZE, SIZE), threshold=0.5, backbone="tf_efficientnet_lite0",
                             num_seen_anomalies=0, topk=100, map_smoothing_sigma=0.0,
                             prototypes_per_stage=network.prototypes.counts(), version=prn_lightning.__version__)
    for fmt in ("onnx", "openvino"):
        maps, _ = load_inferencer(export_model(ExportableModel(network, 100, 0.0), metadata, fmt,
                                               tmp_path / fmt)).predict(queries.numpy())
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


def test_prn_export_writes_each_format_and_its_metadata(checkpoint: Path, real_images, tmp_path: Path) -> None:
    _, queries = real_images
    images = queries.numpy()
    eager = load_inferencer(checkpoint, device="cpu")
    expected_maps, expected_scores = eager.predict(images)
    module = PRNModule.from_checkpoint(checkpoint)
    for fmt in EXPORT_FORMATS:
        out = tmp_path / fmt
        assert main(["export", f"ckpt={checkpoint}", f"format={fmt}", f"out={out}"]) == 0
        metadata = json.loads((out / "metadata.json").read_text())
        assert metadata["image_size"] == [SIZE, SIZE] and metadata["format"] == fmt
        assert metadata["threshold"] == pytest.approx(float(module.image_threshold), abs=0.0)
        assert metadata["backbone"] == "tf_efficientnet_lite0" and metadata["num_seen_anomalies"] == 2
        assert metadata["version"] == prn_lightning.__version__
        assert metadata["prototypes_per_stage"] == module.network.prototypes.counts()
        inferencer = load_inferencer(out)  # the folder: its metadata names the model file
        assert inferencer.metadata.model_file == (out / metadata["model_file"]).name
        maps, scores = inferencer.predict(images)
        assert np.abs(maps - expected_maps).max() <= MAP_TOLERANCE
        np.testing.assert_array_equal(scores >= metadata["threshold"], expected_scores >= metadata["threshold"])


def test_export_mistakes_are_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ExportError, match="format='tflite' is not one of onnx, openvino, torchscript"):
        export_checkpoint(checkpoint, "tflite", tmp_path / "out")
    assert main(["export", f"ckpt={tmp_path / 'missing.ckpt'}", "format=onnx", f"out={tmp_path / 'out'}"]) == 2
    assert main(["export", f"ckpt={checkpoint}", "format=onnx"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("error: checkpoint") and "missing.ckpt" in errors[0]
    assert errors[1] == "error: prn export needs ckpt=PATH format=onnx|openvino|torchscript out=DIR"
    with pytest.raises(FileNotFoundError, match="nothing-here does not exist"):
        load_inferencer(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="metadata.json is missing"):
        load_inferencer(tmp_path / "empty")
