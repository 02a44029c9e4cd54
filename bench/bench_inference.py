"""Inference per 256x256 image on CPU, batch 1 and 8: PRN against anomalib 2.7's PatchCore with the same backbone.

Both use the bundled ImageNet EfficientNet-Lite0 (the default offline backbone; PatchCore reads its stride-8 and
stride-16 stages, as in bench/quality.py). PRN: the default model config, prototypes fitted on 60 normal images
(ratio 0.1). PatchCore: anomalib's `PatchcoreModel`, a memory bank of 10 % of the patches of the same 60 images
(picked at random: inference cost depends on the bank's size, not on how the coreset was chosen), 9 neighbours;
input normalised with the backbone's mean/std in both. Each model runs in its own process; medians over repeats.
Paper reference (GPU): 0.064 s per image.

Writes bench/results/inference.json. Usage: python bench/bench_inference.py [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from common import REPO, median_seconds, row, write_result

SIZE, NUM_NORMAL = 256, 60
PAPER_S_PER_IMAGE = 0.064


def textures(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random [0, 1] images (low-frequency noise plus grain)."""
    coarse = torch.rand(n, 3, SIZE // 16, SIZE // 16, generator=generator)
    smooth = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=generator)).clamp_(0, 1)


def prn_model(normals: torch.Tensor):
    from omegaconf import OmegaConf

    from prn_lightning.models.prn import PRNNetwork

    cfg = OmegaConf.load(REPO / "experiments" / "model" / "base.yaml").model
    network = PRNNetwork.from_config(cfg, SIZE)
    network.prototypes.fit(network.extract_prototype_features(normals.split(8)), ratio=0.1,
                           iterations=int(cfg.kmeans_iterations), seed=0)
    return network.eval()


def patchcore_model(normals: torch.Tensor):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from prn_lightning.models.prn.backbone import load_bundled_weights

    name = "tf_efficientnet_lite0"
    model = PatchcoreModel(layers=[2, 3], backbone=name, pre_trained=False, num_neighbors=9)
    extractor = model.feature_extractor.feature_extractor
    load_bundled_weights(extractor, name)
    mean = torch.tensor(extractor.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(extractor.pretrained_cfg["std"]).view(1, 3, 1, 1)
    model.train()
    model.feature_extractor.eval()
    with torch.no_grad():
        for batch in normals.split(8):
            model((batch - mean) / std)
    bank = torch.vstack(model.embedding_store)
    keep = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(0))[: bank.shape[0] // 10]
    model.memory_bank = bank[keep].contiguous()
    model.embedding_store = []
    model.eval()
    return lambda images: model((images - mean) / std), int(model.memory_bank.shape[0])


def run_case(which: str, repeats: int) -> dict:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    normals = textures(NUM_NORMAL, generator)
    one, eight = textures(1, generator), textures(8, generator)
    extra = {}
    if which == "prn":
        network = prn_model(normals)
        infer = network
        extra["prototypes_per_stage"] = network.prototypes.counts()
    else:
        infer, extra["memory_bank"] = patchcore_model(normals)
    with torch.no_grad():
        batch1, _ = median_seconds(lambda: infer(one), repeats=repeats, warmup=2)
        batch8, _ = median_seconds(lambda: infer(eight), repeats=max(3, repeats // 2), warmup=1)
    return {"model": which, "batch1_s_per_image": batch1, "batch8_s_per_image": batch8 / 8,
            "torch_threads": torch.get_num_threads(), **extra}


def measure(which: str, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'bench'}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "--case", which, "--repeats", str(repeats)], capture_output=True,
                          text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"inference case {which} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeats)))
        return
    results = {"prn": measure("prn", args.repeats)}
    try:
        results["patchcore"] = measure("patchcore", args.repeats)
    except RuntimeError as err:
        print(f"anomalib PatchCore not measured (install the bench extra): {str(err).splitlines()[-1]}")
    print(json.dumps(results, indent=1))
    ours, peer = results["prn"], results.get("patchcore")
    rows = []
    for batch in (1, 8):
        key = f"batch{batch}_s_per_image"
        rows.append(row(f"inference per image, 256 px, batch {batch} (Lite0)", round(ours[key], 4), "s",
                        peer=round(peer[key], 4) if peer else None,
                        peer_name="anomalib 2.7 PatchCore (same backbone)",
                        note=f"paper (GPU): {PAPER_S_PER_IMAGE} s" + (
                            f"; PatchCore bank {peer['memory_bank']} patches" if peer else "")))
    write_result("inference", {"image_size": SIZE, "results": results, "rows": rows})


if __name__ == "__main__":
    main()
