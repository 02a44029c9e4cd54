"""End-to-end learning check: PRN with the bundled ImageNet backbone overfits a handful of defect images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from prn_lightning.models.prn import PRNLoss, PRNNetwork, anomaly_map

MODEL_BASE = Path(__file__).resolve().parents[1] / "experiments" / "model" / "base.yaml"
SIZE = 128
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A woven-looking gray texture: a few random gratings plus fine noise, values around 0.5."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    image = np.full((SIZE, SIZE), 0.5, dtype=np.float32)
    for frequency in (0.15, 0.3, 0.45):
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        image += 0.08 * np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    image += rng.normal(0, 0.03, size=image.shape).astype(np.float32)
    return image


def _with_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright or dark elliptic blob at a random place, and its exact mask."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = rng.uniform(24, SIZE - 24, size=2)
    ry, rx = rng.uniform(7, 16, size=2)
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.float32)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return np.clip(image + sign * 0.35 * mask, 0, 1), mask


def _to_tensor(grays: list[np.ndarray]) -> torch.Tensor:
    rgb = np.stack([np.repeat(g[..., None], 3, axis=2) for g in grays])
    return torch.from_numpy((rgb - MEAN) / STD).permute(0, 3, 1, 2).contiguous().float()


def test_prn_overfits_a_few_defect_images():
    rng = np.random.default_rng(0)
    normals = _to_tensor([_texture(rng) for _ in range(6)])
    defects = [_with_defect(_texture(rng), rng) for _ in range(5)]
    images = _to_tensor([image for image, _ in defects])
    masks = torch.from_numpy(np.stack([mask for _, mask in defects]))[:, None]

    cfg = OmegaConf.load(MODEL_BASE).model  # bundled ImageNet EfficientNet-Lite0, all modules on
    cfg.msa_blocks = 1
    torch.manual_seed(0)
    network = PRNNetwork.from_config(cfg, SIZE)
    features = network.extract_prototype_features([normals[:3], normals[3:]])
    network.prototypes.fit(features, ratio=0.5, iterations=10, seed=0)

    loss_fn = PRNLoss.from_config(cfg.loss)
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=2e-3)
    network.train()
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss, _ = loss_fn(network(images), masks)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())

    network.eval()
    with torch.no_grad():
        maps = anomaly_map(network(images))
    auroc = roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3]), f"loss did not fall: {losses[:3]} -> {losses[-5:]}"
    assert auroc > 0.9, f"pixel AUROC {auroc:.3f}"
