"""PRN's network parts as plain torch modules (usable without Lightning)."""
from prn_lightning.models.prn.attention import MultiSizeAttention, MultiSizeAttentionBlock
from prn_lightning.models.prn.backbone import BackboneError, FrozenBackbone, load_bundled_weights
from prn_lightning.models.prn.decoder import UNetDecoder
from prn_lightning.models.prn.loss import PRNLoss, binary_focal_loss
from prn_lightning.models.prn.network import PRNNetwork
from prn_lightning.models.prn.prototypes import PrototypeBank, PrototypeError, number_of_prototypes
from prn_lightning.models.prn.residual import MultiScaleFusion, prototype_residual
from prn_lightning.models.prn.scoring import anomaly_map, image_score

__all__ = [
    "BackboneError",
    "FrozenBackbone",
    "MultiScaleFusion",
    "MultiSizeAttention",
    "MultiSizeAttentionBlock",
    "PRNLoss",
    "PRNNetwork",
    "PrototypeBank",
    "PrototypeError",
    "UNetDecoder",
    "anomaly_map",
    "binary_focal_loss",
    "image_score",
    "load_bundled_weights",
    "number_of_prototypes",
    "prototype_residual",
]
