"""PRNNetwork: frozen backbone -> prototype residuals -> multi-scale fusion -> multi-size attention -> decoder.

The backbone's four stages: the first three get prototypes, fusion and MSA; the fourth feeds only the decoder.
Each paper ablation (Table 4) is a switch that removes its module entirely rather than replacing it by a no-op
that still holds weights:
- use_prototypes=false: no prototype bank and no residual branch; the stages carry features only.
- use_fusion=false: no fusion blocks; every stage keeps its own map.
- use_msa=false: no attention blocks (and no second fusion block, which follows MSA).

The network takes images in [0, 1] and normalises them itself with the mean/std its backbone's weights expect (timm's
pretrained config), held as buffers: prototypes, training, evaluation, prediction and any export go through one path,
and a caller cannot feed it wrongly normalised images.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from prn_lightning.models.prn.attention import MultiSizeAttention
from prn_lightning.models.prn.backbone import FrozenBackbone
from prn_lightning.models.prn.decoder import UNetDecoder
from prn_lightning.models.prn.prototypes import PrototypeBank
from prn_lightning.models.prn.residual import MultiScaleFusion, prototype_residual

NUM_PROTOTYPE_STAGES = 3
# Every checkpoint written before the network normalised its own input was trained on images normalised with these
# ImageNet statistics, whatever its backbone: they fill in the mean/std such a checkpoint lacks.
LEGACY_INPUT_MEAN = (0.485, 0.456, 0.406)
LEGACY_INPUT_STD = (0.229, 0.224, 0.225)


def _channel_stats(values: Sequence[float]) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, 3, 1, 1)


class PRNNetwork(nn.Module):
    """`logits (B, 1, H, W) = PRNNetwork(...)(images (B, 3, H, W))`, images RGB in [0, 1] (normalised inside)."""

    def __init__(
        self,
        backbone: FrozenBackbone,
        image_size: int | Sequence[int],
        use_prototypes: bool = True,
        prototype_lookup: str = "torch",
        prototype_match: str = "image",
        prototype_neighbourhood: int = 0,
        use_fusion: bool = True,
        use_msa: bool = True,
        msa_blocks: int = 3,
        msa_sizes: int = 4,
        msa_logit_scale: str = "token_dim",
        decoder_channels: Sequence[int] = (256, 128, 64, 32),
    ) -> None:
        super().__init__()
        channels, strides = backbone.channels, backbone.strides
        if len(channels) != NUM_PROTOTYPE_STAGES + 1:
            raise ValueError(
                f"model.backbone.out_indices must select 4 stages (3 prototype stages + 1 decoder stage), "
                f"got {len(channels)} for model.backbone.name={backbone.name}"
            )
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        self._check_size(self.image_size, strides[-1], backbone.name)
        self.backbone = backbone
        self.settings = {  # what `from_config` needs to rebuild this network around a checkpoint's weights
            "backbone": {"name": backbone.name, "weights": "none",
                         "out_indices": [int(i) for i in backbone.model.feature_info.out_indices]},
            "use_prototypes": use_prototypes, "prototype_lookup": prototype_lookup, "use_fusion": use_fusion,
            "prototype_match": prototype_match, "prototype_neighbourhood": prototype_neighbourhood,
            "use_msa": use_msa, "msa_blocks": msa_blocks, "msa_sizes": msa_sizes,
            "msa_logit_scale": msa_logit_scale,
            "decoder_channels": [int(c) for c in decoder_channels],
        }
        config = backbone.model.pretrained_cfg
        self.register_buffer("input_mean", _channel_stats(config["mean"]))
        self.register_buffer("input_std", _channel_stats(config["std"]))
        stage_channels, stage_strides = channels[:NUM_PROTOTYPE_STAGES], strides[:NUM_PROTOTYPE_STAGES]
        self.prototypes = (
            PrototypeBank(NUM_PROTOTYPE_STAGES, prototype_lookup, prototype_match, prototype_neighbourhood)
            if use_prototypes else None
        )
        self.feature_fusion = MultiScaleFusion(stage_channels, stage_strides) if use_fusion else None
        with_residuals = use_fusion and use_prototypes
        self.residual_fusion = MultiScaleFusion(stage_channels, stage_strides) if with_residuals else None
        merged = [2 * c if use_prototypes else c for c in stage_channels]
        self.attention = MultiSizeAttention(merged, msa_blocks, msa_sizes, msa_logit_scale) if use_msa else None
        self.attention_fusion = MultiScaleFusion(merged, stage_strides) if use_msa and use_fusion else None
        self.decoder = UNetDecoder(merged, channels[-1], decoder_channels)

    @classmethod
    def from_config(cls, model_cfg: Any, image_size: int | Sequence[int],
                    pretrained_backbone: bool = True) -> PRNNetwork:
        """From the `model` config section and `data.image_size`.

        `pretrained_backbone=False` builds the backbone with random weights: for loading a checkpoint, which holds
        the backbone's weights too (no download, no weight package needed).
        """
        cfg = model_cfg if isinstance(model_cfg, DictConfig) else OmegaConf.create(model_cfg)
        backbone = FrozenBackbone(
            name=str(cfg.backbone.name),
            weights=str(cfg.backbone.weights) if pretrained_backbone else "none",
            out_indices=tuple(int(i) for i in cfg.backbone.out_indices),
        )
        return cls(
            backbone,
            image_size,
            use_prototypes=bool(cfg.use_prototypes),
            prototype_lookup=str(cfg.prototype_lookup),
            # configs saved before these keys existed matched whole maps
            prototype_match=str(cfg.get("prototype_match", "image")),
            prototype_neighbourhood=int(cfg.get("prototype_neighbourhood", 0)),
            use_fusion=bool(cfg.use_fusion),
            use_msa=bool(cfg.use_msa),
            msa_blocks=int(cfg.msa_blocks),
            msa_sizes=int(cfg.msa_sizes),
            msa_logit_scale=str(cfg.get("msa_logit_scale", "token_dim")),  # configs saved before the key: 1 / D
            decoder_channels=[int(c) for c in cfg.decoder_channels],
        )

    @staticmethod
    def _check_size(size: Sequence[int], stride: int, name: str) -> None:
        if any(s % stride for s in size):
            raise ValueError(
                f"image size {tuple(size)} (data.image_size) must be a multiple of {stride}, the deepest stride of "
                f"model.backbone.name={name}; e.g. 256"
            )

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """A checkpoint from before the network normalised its input lacks the buffers: give it the ImageNet
        statistics it was trained with, so it keeps producing the same maps."""
        missing = [name for name in ("input_mean", "input_std") if prefix + name not in state_dict]
        if missing and any(key.startswith(prefix + "decoder.") for key in state_dict):
            warnings.warn("checkpoint predates the network's own input normalisation: using the ImageNet mean/std "
                          "it was trained with", stacklevel=2)
            state_dict.setdefault(prefix + "input_mean", _channel_stats(LEGACY_INPUT_MEAN))
            state_dict.setdefault(prefix + "input_std", _channel_stats(LEGACY_INPUT_STD))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone features of [0, 1] images (normalised here), every stage."""
        return self.backbone((images - self.input_mean) / self.input_std)

    @torch.no_grad()
    def extract_prototype_features(self, batches: Iterable[Tensor | Mapping[str, Tensor]]) -> list[Tensor]:
        """Backbone features of the prototype stages for every image, as CPU float32 (N, c_j, h_j, w_j) per stage.

        `batches` yields [0, 1] image batches (B, 3, H, W) or dicts with an "image" entry (a prototype dataloader);
        they are moved to the network's device, and the features back to the CPU to bound accelerator memory.
        """
        device = next(self.backbone.parameters()).device
        collected: list[list[Tensor]] = [[] for _ in range(NUM_PROTOTYPE_STAGES)]
        for batch in batches:
            images = batch["image"] if isinstance(batch, Mapping) else batch
            if not isinstance(images, Tensor) or images.dim() != 4:
                raise ValueError("extract_prototype_features expects batches of images (B, 3, H, W) or dicts with "
                                 "an 'image' entry of that shape")
            features = self.features(images.to(device))
            for stage in range(NUM_PROTOTYPE_STAGES):
                collected[stage].append(features[stage].float().cpu())
        if not collected[0]:
            raise ValueError("extract_prototype_features got no images: the normal training set is empty")
        return [torch.cat(stage) for stage in collected]

    def forward(self, images: Tensor, members: Tensor | None = None) -> Tensor:
        """Logits (B, 1, H, W) for [0, 1] images. `members` (B,) bool, training only: samples built on a normal
        training image, matched to the prototypes leave-one-out (`PrototypeBank.nearest`)."""
        features = self.features(images)
        stages, deep = features[:NUM_PROTOTYPE_STAGES], features[NUM_PROTOTYPE_STAGES]
        maps = self.feature_fusion(stages) if self.feature_fusion is not None else stages
        if self.prototypes is not None:
            residuals = [prototype_residual(f, self.prototypes.nearest(j, f, members)) for j, f in enumerate(stages)]
            if self.residual_fusion is not None:
                residuals = self.residual_fusion(residuals)
            maps = [torch.cat([m, r], dim=1) for m, r in zip(maps, residuals)]
        if self.attention is not None:
            maps = self.attention(maps)
            if self.attention_fusion is not None:
                maps = self.attention_fusion(maps)
        return self.decoder(maps, deep, tuple(images.shape[-2:]))
