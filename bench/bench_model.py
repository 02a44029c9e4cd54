"""PRN network speed on this machine's CPU: inference per 256x256 image (batch 1 and 8), one training step, and the
prototype fit (feature extraction + FAISS k-means over 60 images, ratio 0.1), for the default offline backbone
(EfficientNet-Lite0, bundled weights) and for resnet18 (the re-implementation's backbone; random weights here).

Writes bench/results/model.json. Paper reference: 0.064 s per image (GPU).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from prn_lightning.models.prn import PRNLoss, PRNNetwork

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZE = 256
NUM_NORMAL = 60
RATIO = 0.1
BACKBONES = [("tf_efficientnet_lite0", "bundled"), ("resnet18", "none")]


def random_textures(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random textures (low-frequency noise plus grain), ImageNet-normalised-like values."""
    coarse = torch.randn(n, 3, SIZE // 16, SIZE // 16, generator=generator)
    smooth = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return smooth + 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=generator)


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_backbone(name: str, weights: str) -> dict:
    cfg = OmegaConf.load(REPO / "experiments" / "model" / "base.yaml").model
    cfg.backbone.name, cfg.backbone.weights = name, weights
    torch.manual_seed(0)
    network = PRNNetwork.from_config(cfg, SIZE)
    generator = torch.Generator().manual_seed(0)
    normals = random_textures(NUM_NORMAL, generator)

    start = time.perf_counter()
    features = network.extract_prototype_features(normals.split(8))
    extract_s = time.perf_counter() - start
    start = time.perf_counter()
    network.prototypes.fit(features, ratio=RATIO, iterations=int(cfg.kmeans_iterations), seed=0)
    kmeans_s = time.perf_counter() - start

    network.eval()
    one, eight = random_textures(1, generator), random_textures(8, generator)
    with torch.no_grad():
        batch1 = median_seconds(lambda: network(one), repeats=7)
        batch8 = median_seconds(lambda: network(eight), repeats=3) / 8

    network.train()
    loss_fn = PRNLoss.from_config(cfg.loss)
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    masks = (torch.rand(8, 1, SIZE, SIZE, generator=generator) > 0.97).float()

    def train_step():
        optimiser.zero_grad()
        loss, _ = loss_fn(network(eight), masks)
        loss.backward()
        optimiser.step()

    train8 = median_seconds(train_step, repeats=3, warmup=1) / 8
    return {
        "backbone": name,
        "weights": weights,
        "trainable_params": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "backbone_params": sum(p.numel() for p in network.backbone.parameters()),
        "prototypes_per_stage": network.prototypes.counts(),
        "prototype_floats": sum(network.prototypes[s].numel() for s in range(3)),
        "extract_60_images_s": round(extract_s, 3),
        "kmeans_s": round(kmeans_s, 3),
        "infer_batch1_s_per_image": round(batch1, 4),
        "infer_batch8_s_per_image": round(batch8, 4),
        "train_batch8_s_per_image": round(train8, 4),
    }


def main() -> None:
    load_before = os.getloadavg()[0]
    results = [bench_backbone(name, weights) for name, weights in BACKBONES]
    header = (f"{'backbone':32s} {'params':>9s} {'K':>9s} {'fit s':>7s} {'b1 s/img':>9s} {'b8 s/img':>9s} "
              f"{'train s/img':>11s}")
    print(f"PRN at {SIZE}x{SIZE}, CPU threads: {torch.get_num_threads()}, load average before: {load_before:.1f} "
          "(other processes on the machine slow every figure down)")
    print(header)
    for r in results:
        k = "/".join(str(c) for c in r["prototypes_per_stage"])
        fit = r["extract_60_images_s"] + r["kmeans_s"]
        label = f"{r['backbone']} ({r['weights']})"
        print(f"{label:32s} {r['trainable_params'] / 1e6:8.2f}M {k:>9s} {fit:7.2f} "
              f"{r['infer_batch1_s_per_image']:9.3f} {r['infer_batch8_s_per_image']:9.3f} "
              f"{r['train_batch8_s_per_image']:11.3f}")
    out = HERE / "results" / "model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "image_size": SIZE,
        "num_normal_images": NUM_NORMAL,
        "prototype_ratio": RATIO,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_before": round(load_before, 2),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
