"""Prototype fitting on real images: feature extraction and FAISS k-means for the 600 normal images of
../shared/data/magnetic_tile (train/good) at 256 px, bundled EfficientNet-Lite0, ratio 0.1 (K = 60 per stage).

Reported separately: decoding (all cores, as the training run's image cache does), backbone feature extraction
(batches of 8) and the k-means of the three stages (the model config's iterations, median of `--repeats`). Target
(issue 11): clustering at most 20 % of extraction. Skipped when the shared data is absent.

Writes bench/results/prototypes.json. Usage: python bench/bench_prototypes.py [--repeats N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from common import REPO, SHARED, row, write_result

SIZE, BATCH, RATIO = 256, 8, 0.1
TARGET_SHARE = 0.20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = SHARED / "magnetic_tile" / "train" / "good"
    if not folder.is_dir():
        print(f"skipped: {folder} not found")
        return
    from prn_lightning.data.image_cache import ImageCache
    from prn_lightning.imaging.io import list_images
    from prn_lightning.imaging.tensors import image_to_tensor
    from prn_lightning.models.prn import PRNNetwork

    paths = list_images(folder)
    cache = ImageCache()
    start = time.perf_counter()
    cache.preload(paths, SIZE)
    images = torch.stack([image_to_tensor(cache.load(p, SIZE)) for p in paths])
    decode_s = time.perf_counter() - start

    cfg = OmegaConf.load(REPO / "experiments" / "model" / "base.yaml").model
    network = PRNNetwork.from_config(cfg, SIZE).eval()
    start = time.perf_counter()
    features = network.extract_prototype_features(images.split(BATCH))
    extract_s = time.perf_counter() - start
    kmeans_runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        network.prototypes.fit(features, ratio=RATIO, iterations=int(cfg.kmeans_iterations), seed=0)
        kmeans_runs.append(time.perf_counter() - start)
    kmeans_s = statistics.median(kmeans_runs)
    share = kmeans_s / extract_s
    print(f"{len(paths)} images: decode {decode_s:.2f} s, extraction {extract_s:.2f} s, k-means {kmeans_s:.2f} s "
          f"(K {network.prototypes.counts()}, {100 * share:.1f} % of extraction)")
    rows = [row(f"prototype feature extraction, {len(paths)} magnetic_tile images (batch {BATCH})", round(extract_s, 2),
                "s", note=f"decoding them first: {decode_s:.2f} s on all cores"),
            row(f"FAISS k-means, K = {network.prototypes.counts()[0]} per stage, 3 stages", round(kmeans_s, 2), "s",
                target=f"<= {100 * TARGET_SHARE:g} % of extraction", met=share <= TARGET_SHARE,
                note=f"{100 * share:.1f} % of extraction")]
    write_result("prototypes", {"images": len(paths), "image_size": SIZE, "ratio": RATIO, "decode_s": decode_s,
                                "extract_s": extract_s, "kmeans_s": kmeans_s, "kmeans_s_runs": kmeans_runs,
                                "prototypes_per_stage": network.prototypes.counts(), "rows": rows})


if __name__ == "__main__":
    main()
