"""Simulated-anomaly synthesis throughput on CPU at 256x256, batch 32.

1. device part alone: batched Perlin masks + opacities + the blend formula on tensors already in memory;
2. full training path: PRNDataModule with only simulated anomalies (anomaly_ratio 1), a DataLoader with 2 workers
   reading normal images and texture crops (JPEG decode, crop, resize), then the batch completion in the main
   process, as a Trainer would run it. Normals: ../shared/data/magnetic_tile (else a generated synthetic set);
   textures: ../shared/data/textures/brodatz (else augmented normal images).
Peer (STACK_NOTES): anomalib 2.7 PerlinAnomalyGenerator with a texture folder, about 54 images/s (one per call).

Writes bench/results/synthesis.json.  Usage: python bench/bench_synthesis.py [--batches N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from omegaconf import OmegaConf

from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.synthesis.perlin import perlin_masks
from prn_lightning.synthesis.simulated import sample_beta, simulate_anomalies

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("PRN_SHARED_DATA", REPO.parent / "shared" / "data"))
SIZE, BATCH, WORKERS = 256, 32, 2
ANOMALIB_IMAGES_PER_S = 54.0
PERLIN = dict(min_scale=0, max_scale=6, threshold=0.5, rotation_deg=90.0)


def device_part(batches: int) -> dict:
    """Seconds per batch (median) of Perlin masks alone and of masks + beta + blend."""
    generator = torch.Generator().manual_seed(0)
    normal = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)
    source = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)
    masks_only, full = [], []
    perlin_masks(BATCH, SIZE, SIZE, generator=generator, device="cpu", **PERLIN)  # warm-up
    for _ in range(batches):
        start = time.perf_counter()
        mask = perlin_masks(BATCH, SIZE, SIZE, generator=generator, device="cpu", **PERLIN)
        middle = time.perf_counter()
        beta = sample_beta(BATCH, (0.0, 0.8), generator=generator, device="cpu")
        simulate_anomalies(normal, source, mask, beta)
        end = time.perf_counter()
        masks_only.append(middle - start)
        full.append(end - start)
    return {"perlin_s_per_batch": statistics.median(masks_only), "masks_and_blend_s_per_batch": statistics.median(full)}


def data_source(scratch: Path) -> tuple[dict, str]:
    """Data config overrides for the normal images, and a description."""
    if (SHARED / "magnetic_tile" / "train" / "good").is_dir():
        return {"dataset": "folder", "root": str(SHARED), "category": "magnetic_tile"}, "magnetic_tile (JPEG)"
    generate_synthetic(scratch, image_size=SIZE, num_train=64, num_test_good=2, num_per_defect=1,
                       categories=("texture",))
    return {"dataset": "folder", "root": str(scratch), "category": "texture"}, "generated synthetic texture (PNG)"


def full_path(batches: int, scratch: Path) -> dict:
    """Images/s of the whole simulated-anomaly training path, steady state (workers already started)."""
    overrides, normals = data_source(scratch)
    textures = SHARED / "textures" / "brodatz"
    cfg = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({**overrides, "image_size": SIZE, "num_seen_anomalies": 0, "anomaly_ratio": 1.0,
                    "samples_per_epoch": BATCH * batches, "batch_size": BATCH, "num_workers": WORKERS,
                    "generation": {"seen": False, "extended": False, "simulated": True},
                    "texture_dir": str(textures) if textures.is_dir() else None, "val_synthetic_per_normal": 0})
    dm = PRNDataModule(cfg, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    timings = []
    for epoch in range(2):  # epoch 0 starts the persistent workers; epoch 1 is timed
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        count = sum(len(dm.on_after_batch_transfer(batch, 0)["label"]) for batch in loader)
        timings.append((count, time.perf_counter() - start))
    count, seconds = timings[1]
    return {"normals": normals, "textures": str(textures) if textures.is_dir() else "augmented normals",
            "images": count, "seconds": seconds, "first_epoch_seconds_with_worker_start": timings[0][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches of 32 per measurement")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    device = device_part(args.batches)
    with tempfile.TemporaryDirectory() as scratch:
        full = full_path(args.batches, Path(scratch))
    rates = {
        "perlin_masks": BATCH / device["perlin_s_per_batch"],
        "masks_and_blend": BATCH / device["masks_and_blend_s_per_batch"],
        "full_path_2_workers": full["images"] / full["seconds"],
    }
    print(f"simulated anomalies, {SIZE}x{SIZE}, batch {BATCH}, CPU ({torch.get_num_threads()} torch threads, "
          f"load {load:.2f} before start)")
    print(f"{'stage':<28}{'images/s':>10}{'x anomalib':>12}")
    for name, rate in rates.items():
        print(f"{name:<28}{rate:>10.1f}{rate / ANOMALIB_IMAGES_PER_S:>12.2f}")
    print(f"anomalib 2.7 PerlinAnomalyGenerator (STACK_NOTES): {ANOMALIB_IMAGES_PER_S:.0f} images/s, one per call")
    print(f"full path: normals {full['normals']}, textures {full['textures']}, {WORKERS} workers")
    result = {"image_size": SIZE, "batch_size": BATCH, "workers": WORKERS, "torch_threads": torch.get_num_threads(),
              "load_average_1m_before": round(load, 2), "machine": platform.machine(), "torch": torch.__version__,
              "images_per_s": {k: round(v, 1) for k, v in rates.items()},
              "anomalib_images_per_s": ANOMALIB_IMAGES_PER_S,
              "device_part": {k: round(v, 4) for k, v in device.items()},
              "full_path": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in full.items()}}
    out = HERE / "results" / "synthesis.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
