"""Exact evaluation metrics (torchmetrics, DDP-safe): image AUROC, pixel AUROC, pixel AP and AUPRO."""
from prn_lightning.metrics.collection import AnomalyMetrics
from prn_lightning.metrics.image_auroc import ImageAUROC
from prn_lightning.metrics.inputs import MetricInputError
from prn_lightning.metrics.pixel_ap import PixelAP
from prn_lightning.metrics.pixel_auroc import PixelAUROC
from prn_lightning.metrics.pro import AUPRO

__all__ = ["AUPRO", "AnomalyMetrics", "ImageAUROC", "MetricInputError", "PixelAP", "PixelAUROC"]
