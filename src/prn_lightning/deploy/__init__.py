"""Deployment: `prn export` to ONNX / OpenVINO IR / TorchScript, and one inference interface for every format."""
from prn_lightning.deploy.export import EXPORT_FORMATS, ExportableModel, ExportError, export_checkpoint, export_model
from prn_lightning.deploy.inferencers import Inferencer, load_inferencer
from prn_lightning.deploy.metadata import ModelFileError, ModelMetadata

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportableModel",
    "Inferencer",
    "ModelFileError",
    "ModelMetadata",
    "export_checkpoint",
    "export_model",
    "load_inferencer",
]
