"""PRNNetwork wiring, ablation switches, loss and scoring."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prn_lightning.models.prn import PRNLoss, PRNNetwork, PrototypeError, anomaly_map, binary_focal_loss, image_score
from prn_lightning.models.prn.attention import MultiSizeAttentionBlock, patch_attention, patch_sizes
from prn_lightning.models.prn.loss import soft_dice_loss
from prn_lightning.models.prn.scoring import gaussian_kernel1d

MODEL_BASE = Path(__file__).resolve().parents[1] / "experiments" / "model" / "base.yaml"


def _config(**changes):
    cfg = OmegaConf.load(MODEL_BASE).model
    cfg.backbone.weights = "none"
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def _fitted_network(cfg, size: int, num_images: int = 4) -> PRNNetwork:
    torch.manual_seed(0)
    network = PRNNetwork.from_config(cfg, size)
    if network.prototypes is not None:
        images = torch.randn(num_images, 3, size, size)
        network.prototypes.fit(network.extract_prototype_features([images[:2], {"image": images[2:]}]),
                               ratio=0.5, iterations=5, seed=0)
    return network


@pytest.mark.parametrize("size", [64, 256])
def test_logit_shapes(size):
    network = _fitted_network(_config(msa_blocks=1), size).eval()
    with torch.no_grad():
        logits = network(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 1, size, size)
    assert torch.isfinite(logits).all()


def test_prototype_features_per_stage():
    network = PRNNetwork.from_config(_config(), 64)
    images = torch.randn(5, 3, 64, 64)
    features = network.extract_prototype_features([images[:3], {"image": images[3:], "label": torch.zeros(2)}])
    assert [tuple(f.shape) for f in features] == [(5, 24, 16, 16), (5, 40, 8, 8), (5, 112, 4, 4)]
    assert all(f.dtype == torch.float32 and f.device.type == "cpu" for f in features)
    torch.testing.assert_close(features[0][3:], network.backbone((images[3:] - 0.5) / 0.5)[0])  # timm: lite0 mean/std


@pytest.mark.parametrize("use_prototypes,use_fusion,use_msa", list(itertools.product([True, False], repeat=3)))
def test_every_ablation_builds_runs_and_drops_its_modules(use_prototypes, use_fusion, use_msa):
    cfg = _config(use_prototypes=use_prototypes, use_fusion=use_fusion, use_msa=use_msa, msa_blocks=1,
                  decoder_channels=[32, 16, 16, 8])
    network = _fitted_network(cfg, 64).train()
    logits = network(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 64, 64)
    logits.mean().backward()

    names = set(network.state_dict())

    def has(prefix: str) -> bool:
        return any(name.startswith(prefix) for name in names)

    assert has("prototypes.") == use_prototypes
    assert has("residual_fusion.") == (use_prototypes and use_fusion)
    assert has("feature_fusion.") == use_fusion
    assert has("attention.") == use_msa
    assert has("attention_fusion.") == (use_msa and use_fusion)
    assert (network.prototypes is not None) == use_prototypes
    assert (network.feature_fusion is not None) == use_fusion
    assert (network.attention is not None) == use_msa
    skip_in = network.decoder.up1.conv[0].in_channels - 16  # decoder input = upsampled path (16) + stage-1 skip
    assert skip_in == (48 if use_prototypes else 24)


def test_checkpoint_round_trip_gives_identical_logits():
    source = _fitted_network(_config(msa_blocks=1), 64).eval()
    target = PRNNetwork.from_config(_config(msa_blocks=1), 64, pretrained_backbone=False).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(images), target(images))


def test_clear_errors():
    with pytest.raises(ValueError, match="data.image_size"):
        PRNNetwork.from_config(_config(), 100)
    with pytest.raises(ValueError, match="model.decoder_channels"):
        PRNNetwork.from_config(_config(decoder_channels=[64, 32]), 64)
    with pytest.raises(ValueError, match="4 stages"):
        PRNNetwork.from_config(_config(**{"backbone.out_indices": [1, 2, 3]}), 64)
    with pytest.raises(PrototypeError, match="not fitted"):
        PRNNetwork.from_config(_config(), 64)(torch.randn(1, 3, 64, 64))


def test_loss_is_near_zero_for_perfect_logits():
    mask = (torch.rand(2, 1, 32, 32) > 0.8).float()
    logits = torch.where(mask > 0, 30.0, -30.0)
    loss, parts = PRNLoss()(logits, mask)
    assert loss.item() < 1e-6 and set(parts) == {"smooth_l1", "focal"}
    wrong, _ = PRNLoss()(-logits, mask)
    assert wrong.item() > 0.1
    huge, _ = PRNLoss()(-1e4 * torch.sign(logits), mask)  # saturated logits stay finite
    assert torch.isfinite(huge)


def test_focal_loss_matches_a_hand_computation():
    logits = torch.tensor([2.0, -1.0, 0.5])
    target = torch.tensor([1.0, 0.0, 0.0])
    alpha, gamma = 0.25, 2.0

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    terms = [
        -alpha * (1 - sigmoid(2.0)) ** gamma * math.log(sigmoid(2.0)),
        -(1 - alpha) * sigmoid(-1.0) ** gamma * math.log(1 - sigmoid(-1.0)),
        -(1 - alpha) * sigmoid(0.5) ** gamma * math.log(1 - sigmoid(0.5)),
    ]
    expected = sum(terms) / 3
    assert binary_focal_loss(logits, target, alpha, gamma).item() == pytest.approx(expected, rel=1e-6)
    loss, parts = PRNLoss(smooth_l1_weight=1.0, focal_weight=5.0, focal_alpha=alpha, focal_gamma=gamma)(
        logits.view(1, 1, 1, 3), target.view(1, 1, 3))
    smooth = sum(0.5 * (sigmoid(x) - t) ** 2 for x, t in [(2.0, 1), (-1.0, 0), (0.5, 0)]) / 3
    assert parts["smooth_l1"].item() == pytest.approx(smooth, rel=1e-6)
    assert loss.item() == pytest.approx(smooth + 5.0 * expected, rel=1e-6)


def test_image_score_is_the_top_k_mean():
    maps = torch.zeros(2, 4, 4)
    maps[0].view(-1)[:3] = torch.tensor([0.9, 0.7, 0.5])
    maps[1] = 0.25
    torch.testing.assert_close(image_score(maps, topk=2), torch.tensor([0.8, 0.25]))
    torch.testing.assert_close(image_score(maps, topk=100), maps.flatten(1).mean(1))  # k clamped to 16 pixels


def test_anomaly_map_and_smoothing():
    logits = torch.randn(2, 1, 20, 20)
    torch.testing.assert_close(anomaly_map(logits), torch.sigmoid(logits)[:, 0])
    constant = torch.full((1, 1, 20, 20), 0.3)
    torch.testing.assert_close(anomaly_map(constant, sigma=2.0), torch.sigmoid(constant)[:, 0])
    assert gaussian_kernel1d(1.5, torch.device("cpu"), torch.float32).numel() == 2 * math.ceil(4 * 1.5) + 1
    spike = torch.full((1, 1, 21, 21), -20.0)
    spike[0, 0, 10, 10] = 20.0
    smoothed = anomaly_map(spike, sigma=1.0)
    assert smoothed[0, 10, 10] < 0.5 and smoothed[0, 10, 11] > 0.01  # mass spread to the neighbours
    assert smoothed.sum().item() == pytest.approx(torch.sigmoid(spike).sum().item(), rel=1e-4)


@pytest.mark.parametrize("rule, divisor", [("token_dim", 3 * 4 * 4), ("sqrt_token_dim", (3 * 4 * 4) ** 0.5)])
def test_patch_attention_matches_a_direct_computation(rule, divisor):
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 3 * 3, 8, 8, generator=generator)
    q, k, v = qkv.chunk(3, dim=1)
    # One 8x8 patch: a single token attends only to itself, the output is V.
    torch.testing.assert_close(patch_attention(qkv, (8, 8), rule), v)
    # 4x4 patches: 4 tokens of dimension D = 3 x 4 x 4, gathered by explicit slicing; logits Q K^T / D or / sqrt(D).
    def tokens(x):
        return torch.stack([x[:, :, i:i + 4, j:j + 4].flatten(1) for i in (0, 4) for j in (0, 4)], dim=1)
    weights = torch.softmax(tokens(q) @ tokens(k).transpose(1, 2) / divisor, dim=-1)
    out_tokens = weights @ tokens(v)
    expected = torch.zeros_like(v)
    for t, (i, j) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        expected[:, :, i:i + 4, j:j + 4] = out_tokens[:, t].reshape(2, 3, 4, 4)
    torch.testing.assert_close(patch_attention(qkv, (4, 4), rule), expected)


def test_msa_logit_scale_comes_from_the_config_and_is_checked():
    from omegaconf import OmegaConf

    from prn_lightning.config import experiments_dir

    model_cfg = OmegaConf.load(experiments_dir() / "model" / "base.yaml").model
    model_cfg.backbone.weights, model_cfg.msa_blocks = "none", 1
    model_cfg.msa_logit_scale = "sqrt_token_dim"
    network = PRNNetwork.from_config(model_cfg, 64)
    rules = {m.scale_rule for m in network.modules() if isinstance(m, MultiSizeAttentionBlock)}
    assert rules == {"sqrt_token_dim"} and network.settings["msa_logit_scale"] == "sqrt_token_dim"
    old = OmegaConf.to_container(model_cfg)
    del old["msa_logit_scale"]  # a run config saved before the key existed: the re-implementation's 1 / D
    assert PRNNetwork.from_config(old, 64).attention.stages[0][0].scale_rule == "token_dim"
    with pytest.raises(ValueError, match="model.msa_logit_scale='sqrt' must be one of token_dim, sqrt_token_dim"):
        MultiSizeAttentionBlock(channels=6, scale_rule="sqrt")


def test_msa_handles_small_and_indivisible_maps():
    assert patch_sizes(64, 64, 4) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert patch_sizes(4, 4, 4) == [(4, 4), (2, 2), (1, 1), (1, 1)]  # h/8 < 1 is clamped to 1
    block = MultiSizeAttentionBlock(channels=6, num_sizes=4)
    for size in (4, 28):  # 28 // 8 = 3 does not divide 28: padded, then cropped back
        out = block(torch.randn(2, 6, size, size))
        assert out.shape == (2, 6, size, size) and torch.isfinite(out).all()


FIXTURE = Path(__file__).parent / "fixtures" / "network_before_normalisation.pt"


def test_network_normalises_its_input_and_gives_the_maps_from_before():
    """The fixture holds a tiny network's weights (all but the seeded random backbone), prototypes, [0, 1] images and
    the logits the network gave before it normalised its own input (then the caller applied ImageNet statistics).
    Fed the raw [0, 1] images now, it must give the same logits."""
    saved = torch.load(FIXTURE, weights_only=True)
    torch.manual_seed(0)  # the backbone (random init) is rebuilt exactly as it was when the fixture was made
    network = PRNNetwork.from_config(OmegaConf.create(saved["model_cfg"]), saved["image_size"]).eval()
    # this backbone's timm config holds the ImageNet statistics the fixture was normalised with
    torch.testing.assert_close(network.input_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(network.input_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert {"input_mean", "input_std"} <= set(network.state_dict())
    with pytest.warns(UserWarning, match="predates"):  # the saved state dict has no input_mean/input_std
        missing, unexpected = network.load_state_dict(saved["state_dict"], strict=False)
    assert not unexpected and missing and all(key.startswith("backbone.") for key in missing)
    with torch.no_grad():
        logits = network(saved["images"])
    assert saved["images"].min() >= 0 and saved["images"].max() <= 1
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the input really is normalised inside: shifting it changes the maps
        assert not torch.allclose(network(saved["images"] * 0.5), logits, atol=1e-3)


def test_input_statistics_come_from_the_backbone_config_and_travel_in_the_state_dict():
    lite0 = PRNNetwork.from_config(_config(msa_blocks=1), 64)
    torch.testing.assert_close(lite0.input_mean.flatten(), torch.full((3,), 0.5))  # timm's tf_efficientnet_lite0
    torch.testing.assert_close(lite0.input_std.flatten(), torch.full((3,), 0.5))
    state = lite0.state_dict()
    state["input_mean"] = torch.full((1, 3, 1, 1), 0.25)
    copy = PRNNetwork.from_config(_config(msa_blocks=1), 64)
    copy.load_state_dict(state)  # a current checkpoint's own statistics win over the backbone's config
    assert torch.equal(copy.input_mean, state["input_mean"])


def test_dice_term_scores_region_overlap_over_the_batch():
    # two images: one with a 2-pixel defect, one normal; probabilities 0.5 everywhere (logit 0)
    logits = torch.zeros(2, 1, 2, 2)
    mask = torch.zeros(2, 1, 2, 2)
    mask[0, 0, 0] = 1.0
    # overlap 2 x 0.5 = 1, predicted mass 8 x 0.5 = 4, true mass 2: 1 - (2 + 1) / (4 + 2 + 1)
    assert soft_dice_loss(logits, mask).item() == pytest.approx(1 - 3 / 7, rel=1e-6)
    perfect = torch.where(mask > 0, 30.0, -30.0)
    assert soft_dice_loss(perfect, mask).item() == pytest.approx(0.0, abs=1e-6)
    base = PRNLoss(focal_gamma=2.0)
    with_dice = PRNLoss(focal_gamma=2.0, dice_weight=0.5)
    loss, parts = base(logits, mask)
    loss_dice, parts_dice = with_dice(logits, mask)
    assert "dice" not in parts and parts_dice["dice"].item() == pytest.approx(1 - 3 / 7, rel=1e-6)
    assert loss_dice.item() == pytest.approx(loss.item() + 0.5 * (1 - 3 / 7), rel=1e-6)
    with pytest.raises(ValueError, match="dice_weight=-1"):
        PRNLoss(dice_weight=-1.0)


def test_loss_of_a_run_config_written_before_the_dice_term_existed_is_the_papers():
    old_run = OmegaConf.create({"smooth_l1_weight": 1.0, "focal_weight": 5.0, "focal_alpha": 0.5, "focal_gamma": 2.0})
    OmegaConf.set_struct(old_run, True)  # as `prn train resume=RUN` reads RUN/config.yaml
    assert PRNLoss.from_config(old_run).dice_weight == 0.0
    base = OmegaConf.load(MODEL_BASE).model.loss
    assert PRNLoss.from_config(base).dice_weight == base.dice_weight == 0.0
