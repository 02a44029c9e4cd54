"""Simulated-anomaly synthesis on CPU at 256x256, batch 32: ours end to end against anomalib's generator.

Cases, each in its own process:
- ours, device part: batched Perlin masks + opacities + the blend, on tensors already in memory;
- ours, full training path: PRNDataModule with only simulated anomalies, a DataLoader with 2 workers reading normal
  images and texture crops, then the batch completion in the main process (Perlin masks, blend), as a Trainer runs
  it; steady state (the first epoch starts the workers and is not timed). Normals: ../shared/data/magnetic_tile
  (else a generated synthetic set); textures: ../shared/data/textures/brodatz (else augmented normal images);
- the same full path at the baseline commit (checked out into a temporary git worktree);
- anomalib 2.7 `PerlinAnomalyGenerator` with the same texture folder, on in-memory normal images (it does not read
  them), probability 1.
Medians over repeats (epochs or batches).

Writes bench/results/synthesis.json. Usage: python bench/bench_synthesis.py [--repeats N] [--batches N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, SHARED, row, write_result

SIZE, BATCH, WORKERS = 256, 32, 2
BASELINE = "d1546d8"
TARGET_IMAGES_PER_S = 540.0
PERLIN = dict(min_scale=0, max_scale=6, threshold=0.5, rotation_deg=90.0)
TEXTURES = SHARED / "textures" / "brodatz"


def device_part(batches: int) -> dict:
    """Seconds per batch (median) of Perlin masks alone and of masks + beta + blend."""
    from prn_lightning.synthesis.perlin import perlin_masks
    from prn_lightning.synthesis.simulated import sample_beta, simulate_anomalies

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
    return {"perlin_images_per_s": BATCH / statistics.median(masks_only),
            "masks_and_blend_images_per_s": BATCH / statistics.median(full)}


def data_config(scratch: Path, batches: int):
    from omegaconf import OmegaConf

    if (SHARED / "magnetic_tile" / "train" / "good").is_dir():
        source, normals = {"dataset": "folder", "root": str(SHARED), "category": "magnetic_tile"}, "magnetic_tile"
    else:
        try:
            from prn_lightning.data.sources.synthetic import generate_synthetic
        except ImportError:  # the baseline commit's layout
            from prn_lightning.data.synthetic import generate_synthetic

        generate_synthetic(scratch, image_size=SIZE, num_train=64, num_test_good=2, num_per_defect=1,
                           categories=("texture",))
        source, normals = {"dataset": "folder", "root": str(scratch), "category": "texture"}, "generated texture"
    cfg = OmegaConf.load(Path.cwd() / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({**source, "image_size": SIZE, "num_seen_anomalies": 0, "anomaly_ratio": 1.0,
                    "samples_per_epoch": BATCH * batches, "batch_size": BATCH, "num_workers": WORKERS,
                    "generation": {"seen": False, "extended": False, "simulated": True},
                    "texture_dir": str(TEXTURES) if TEXTURES.is_dir() else None, "val_synthetic_per_normal": 0})
    return cfg, normals


def full_path(batches: int, repeats: int) -> dict:
    """Images/s of the whole simulated-anomaly training path per epoch, after a first epoch that starts workers."""
    from prn_lightning.data.datamodule import PRNDataModule

    with tempfile.TemporaryDirectory() as scratch:
        cfg, normals = data_config(Path(scratch), batches)
        start = time.perf_counter()
        datamodule = PRNDataModule(cfg, seed=0)
        datamodule.setup("fit")
        setup_s = time.perf_counter() - start
        loader = datamodule.train_dataloader()
        rates = []
        for epoch in range(repeats + 1):
            loader.sampler.set_epoch(epoch)
            start = time.perf_counter()
            count = sum(len(datamodule.on_after_batch_transfer(batch, 0)["label"]) for batch in loader)
            if epoch:
                rates.append(count / (time.perf_counter() - start))
    return {"normals": normals, "textures": str(TEXTURES) if TEXTURES.is_dir() else "augmented normals",
            "images_per_epoch": count, "setup_s": setup_s, "images_per_s": statistics.median(rates),
            "images_per_s_epochs": rates}


def anomalib_generator(batches: int) -> dict:
    """anomalib's PerlinAnomalyGenerator with the texture folder, one batch of in-memory images per call."""
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

    generator = PerlinAnomalyGenerator(anomaly_source_path=TEXTURES if TEXTURES.is_dir() else None, probability=1.0)
    torch.manual_seed(0)
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    generator(images[:2])  # warm-up
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        generator(images)
        times.append(time.perf_counter() - start)
    return {"images_per_s": BATCH / statistics.median(times), "batches": batches}


def run(case: str, args: argparse.Namespace, src: Path = REPO / "src", cwd: Path = REPO) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, __file__, "--case", case, "--repeats", str(args.repeats),
                           "--batches", str(args.batches)], capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode:
        raise RuntimeError(f"synthesis case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (full path) per measurement")
    parser.add_argument("--batches", type=int, default=8, help="batches of 32 per epoch / per device measurement")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        cases = {"device": lambda: device_part(args.batches), "full": lambda: full_path(args.batches, args.repeats),
                 "anomalib": lambda: anomalib_generator(args.batches)}
        print(json.dumps(cases[args.case]()))
        return
    results = {"device": run("device", args), "full": run("full", args)}
    try:
        results["anomalib"] = run("anomalib", args)
    except RuntimeError as err:
        print(f"anomalib not measured (install the bench extra): {str(err).splitlines()[-1]}")
    if not args.no_baseline:
        with tempfile.TemporaryDirectory(prefix="prn-bench-") as scratch:
            checkout = Path(scratch) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), BASELINE],
                           check=True, capture_output=True)
            try:
                results["baseline_full"] = run("full", args, checkout / "src", checkout)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                               capture_output=True)
    full, peer = results["full"], results.get("anomalib")
    print(json.dumps(results, indent=1))
    rows = [row(f"simulated anomalies end to end (256 px, batch 32, {WORKERS} workers, textures)",
                round(full["images_per_s"], 1), "images/s", peer=round(peer["images_per_s"], 1) if peer else None,
                peer_name="anomalib 2.7 PerlinAnomalyGenerator", higher_is_better=True,
                target=f">= {TARGET_IMAGES_PER_S:g} images/s (10x anomalib)",
                met=full["images_per_s"] >= TARGET_IMAGES_PER_S,
                note=f"normals {full['normals']}, textures {full['textures']}; anomalib on in-memory images")]
    if "baseline_full" in results:
        base = results["baseline_full"]["images_per_s"]
        rows.append(row("simulated anomalies end to end, vs the baseline commit", round(full["images_per_s"], 1),
                        "images/s", peer=round(base, 1), peer_name=f"baseline {BASELINE}", higher_is_better=True))
    device = results["device"]
    rows.append(row("Perlin masks + blend alone (tensors in memory)", round(device["masks_and_blend_images_per_s"], 1),
                    "images/s", higher_is_better=True,
                    note=f"Perlin masks alone {device['perlin_images_per_s']:.0f} images/s"))
    write_result("synthesis", {"image_size": SIZE, "batch_size": BATCH, "workers": WORKERS, "results": results,
                               "rows": rows})


if __name__ == "__main__":
    main()
