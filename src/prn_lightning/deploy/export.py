"""`prn export`: a trained PRN as one self-contained model file (ONNX, OpenVINO IR or TorchScript) plus metadata.json.

The exported graph maps images (B, 3, H, W) in [0, 1] to (anomaly map (B, H, W), image score (B,)): the network
normalises its input itself, the prototypes are constants of the graph and the nearest-prototype lookup is tensor
ops (squared L2 to each whole prototype map, argmin, gather), so nothing outside the file (no FAISS, no Lightning,
no config) is needed to run it. The image size is fixed at the checkpoint's `data.image_size`; the batch axis is
dynamic.

ONNX uses opset 17 and the TorchScript-based exporter: every op of this graph is implemented by onnxruntime's CPU
provider and by OpenVINO at that opset, and the torch.export-based exporter cannot convert the 3-D
scaled-dot-product attention of the MSA blocks. OpenVINO IR is converted from that ONNX graph and saved in float32
(`compress_to_fp16=False`), so it computes what PyTorch computes.
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

import prn_lightning
from prn_lightning.deploy.metadata import INPUT_NAME, OUTPUT_NAMES, ModelFileError, ModelMetadata
from prn_lightning.errors import PRNUserError
from prn_lightning.models.prn.network import PRNNetwork
from prn_lightning.models.prn.scoring import anomaly_map, image_score

EXPORT_FORMATS = ("onnx", "openvino", "torchscript")
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.pt"}
ONNX_OPSET = 17


class ExportError(PRNUserError):
    """An export that cannot run as asked (unknown format, missing deploy packages); the message says the fix."""


class ExportableModel(nn.Module):
    """`(anomaly_map (B, H, W), score (B,)) = ExportableModel(...)(images (B, 3, H, W) in [0, 1])`.

    The same computation as evaluation: sigmoid of the network's logits, optional Gaussian smoothing, mean of the
    top-k pixels. The prototype lookup is switched to tensor ops (a runtime choice, not part of the weights).
    """

    def __init__(self, network: PRNNetwork, topk: int, map_smoothing_sigma: float) -> None:
        super().__init__()
        self.network = network.eval()
        if network.prototypes is not None:
            network.prototypes.lookup = "torch"
        self.topk = int(topk)
        self.map_smoothing_sigma = float(map_smoothing_sigma)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = anomaly_map(self.network(images), self.map_smoothing_sigma)
        return maps, image_score(maps, self.topk)


def model_from_checkpoint(ckpt: str | Path) -> tuple[ExportableModel, ModelMetadata]:
    """The checkpoint's network as an `ExportableModel` on the CPU, and its metadata (threshold from validation)."""
    from prn_lightning.models.prn.lightning_module import PRNModule

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist; pass ckpt=runs/.../checkpoints/best.ckpt")
    module = PRNModule.from_checkpoint(ckpt)
    network: PRNNetwork = module.network
    data_cfg = (module.run_config or {}).get("data", {})  # absent for a module saved without a run config
    model = ExportableModel(network, module.topk, module.map_smoothing_sigma)
    metadata = ModelMetadata(
        image_size=tuple(network.image_size),
        threshold=float(module.image_threshold),
        backbone=network.backbone.name,
        num_seen_anomalies=data_cfg.get("num_seen_anomalies"),
        topk=model.topk,
        map_smoothing_sigma=model.map_smoothing_sigma,
        prototypes_per_stage=network.prototypes.counts() if network.prototypes is not None else [],
        version=prn_lightning.__version__,
        resize=data_cfg.get("resize", "squash"),
    )
    return model.eval(), metadata


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing warns that shapes become constants (intended: the image size is fixed) and that TorchScript and the
    TorchScript-based ONNX exporter are deprecated in favour of torch.export (which cannot convert this graph)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", category=UserWarning, message=r"Constant folding")
        yield


def _example_input(metadata: ModelMetadata) -> Tensor:
    return torch.rand(1, 3, *metadata.image_size, generator=torch.Generator().manual_seed(0))


def _require(package: str, fmt: str) -> None:
    try:
        __import__(package)
    except ImportError as err:
        raise ExportError(f"format={fmt} needs the package {package}, which is not installed: "
                          "pip install -e '.[deploy]' (`make install` installs it)") from err


def export_onnx(model: ExportableModel, metadata: ModelMetadata, path: Path) -> None:
    _require("onnx", "onnx")
    with _quiet_tracing():
        torch.onnx.export(
            model, (_example_input(metadata),), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        )


def export_openvino(model: ExportableModel, metadata: ModelMetadata, path: Path) -> None:
    _require("openvino", "openvino")
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, metadata, onnx_path)
        ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)


def export_torchscript(model: ExportableModel, metadata: ModelMetadata, path: Path) -> None:
    with _quiet_tracing():
        torch.jit.save(torch.jit.trace(model, _example_input(metadata), check_trace=False), str(path))


EXPORTERS = {"onnx": export_onnx, "openvino": export_openvino, "torchscript": export_torchscript}


def export_model(model: ExportableModel, metadata: ModelMetadata, fmt: str, out_dir: str | Path) -> Path:
    """Write `out_dir/model.{onnx,xml(+bin),pt}` and `out_dir/metadata.json`; returns the model file's path."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format={fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelFileError(f"out={out_dir} is a file; pass a folder for the model and its metadata.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILES[fmt]
    with torch.inference_mode(False), torch.no_grad():
        EXPORTERS[fmt](model.cpu().eval(), metadata, path)
    opset = ONNX_OPSET if fmt in ("onnx", "openvino") else None
    replace(metadata, format=fmt, model_file=path.name, opset=opset).write(out_dir)
    return path


def export_checkpoint(ckpt: str | Path, fmt: str, out_dir: str | Path) -> Path:
    """`prn export ckpt=PATH format=FMT out=DIR`: the checkpoint's model as FMT in DIR; returns the model file."""
    if fmt not in EXPORT_FORMATS:  # before loading the checkpoint
        raise ExportError(f"format={fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    model, metadata = model_from_checkpoint(ckpt)
    return export_model(model, metadata, fmt, out_dir)
