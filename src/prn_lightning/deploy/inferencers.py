"""One inference interface for every format: a checkpoint or TorchScript file (PyTorch), ONNX (onnxruntime) and
OpenVINO IR (OpenVINO), so `prn predict` and the benchmarks run any of them the same way.

Every backend takes images as float32 (B, 3, H, W) in [0, 1] at the model's image size and returns the anomaly maps
(B, H, W) and image scores (B,) as float32 NumPy arrays, with the metadata (threshold, image size) beside them.
OpenVINO runs with the float32 precision hint: its CPU plugin otherwise computes in bfloat16 on processors that
support it, which moves the maps by about 5e-4.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from prn_lightning.deploy.export import ExportError, model_from_checkpoint
from prn_lightning.deploy.metadata import METADATA_FILE, ModelFileError, ModelMetadata

SUFFIXES = {".ckpt": "checkpoint", ".pt": "torchscript", ".onnx": "onnx", ".xml": "openvino"}


class Inferencer(ABC):
    """Anomaly maps and scores for preprocessed images (see `metadata.preprocessing`), whatever the format."""

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (B, 3, H, W) in [0, 1] -> (maps float32 (B, H, W), scores float32 (B,))."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (3, *self.metadata.image_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images must be (B, {', '.join(map(str, expected))}) to match the model's image size, "
                             f"got {images.shape}")
        maps, scores = self._run(images)
        return np.asarray(maps, dtype=np.float32), np.asarray(scores, dtype=np.float32)

    @abstractmethod
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend's forward pass on a checked, contiguous float32 batch."""


class TorchInferencer(Inferencer):
    """PyTorch eager from a checkpoint (`.ckpt`), or a TorchScript export (`.pt`), on CUDA when available."""

    def __init__(self, path: Path, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if path.suffix == ".ckpt":
            self.model, metadata = model_from_checkpoint(path)
        else:
            metadata = ModelMetadata.read(path)
            with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export; it still loads
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
                self.model = torch.jit.load(str(path), map_location="cpu")
        super().__init__(metadata)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.model(torch.from_numpy(images).to(self.device))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()


class OnnxRuntimeInferencer(Inferencer):
    """ONNX Runtime's CPU provider, all graph optimisations on (its default)."""

    def __init__(self, path: Path) -> None:
        super().__init__(ModelMetadata.read(path))
        ort = _import("onnxruntime")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(list(self.metadata.output_names), {self.metadata.input_name: images})
        return maps, scores


class OpenVINOInferencer(Inferencer):
    """OpenVINO on the CPU, compiled once for the dynamic batch; float32 unless `precision` names another hint
    (None: the plugin's default for this processor)."""

    def __init__(self, path: Path, precision: str | None = "f32") -> None:
        super().__init__(ModelMetadata.read(path))
        ov = _import("openvino")
        config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = self.request.infer({self.metadata.input_name: images})
        maps, scores = (results[self.compiled.output(name)] for name in self.metadata.output_names)
        return maps, scores


def _import(package: str):
    try:
        return __import__(package)
    except ImportError as err:
        raise ExportError(f"running this model needs the package {package}, which is not installed: "
                          "pip install -e '.[deploy]' (`make install` installs it)") from err


def model_file(path: str | Path) -> Path:
    """`path` itself, or for a folder written by `prn export` the model file its metadata.json names."""
    path = Path(path)
    if path.is_dir():
        path = path / ModelMetadata.read(path / METADATA_FILE).model_file
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist; pass ckpt=runs/.../checkpoints/best.ckpt or "
                                "model=DIR/model.onnx | DIR/model.xml | DIR/model.pt (written by `prn export`)")
    if path.suffix not in SUFFIXES:
        raise ModelFileError(f"model {path} is not a checkpoint or an exported model: expected one of "
                             f"{', '.join(SUFFIXES)}")
    return path


def load_inferencer(path: str | Path, device: str | None = None, openvino_precision: str = "f32") -> Inferencer:
    """The inferencer for a checkpoint (.ckpt), TorchScript (.pt), ONNX (.onnx) or OpenVINO IR (.xml) file, or for
    the folder `prn export` wrote. `device` applies to the PyTorch formats; ONNX and OpenVINO run on the CPU.
    `openvino_precision` (f32, bf16, f16, or default: the plugin's choice for this CPU) applies to OpenVINO."""
    path = model_file(path)
    kind = SUFFIXES[path.suffix]
    if kind in ("checkpoint", "torchscript"):
        return TorchInferencer(path, device)
    if kind == "onnx":
        return OnnxRuntimeInferencer(path)
    return OpenVINOInferencer(path, None if openvino_precision == "default" else openvino_precision)
