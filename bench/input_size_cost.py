"""What an input size (`data.image_size`) costs per CPU training step: batch 8, the bundled Lite0 network, Adam.

One step = forward + PRNLoss + backward + optimiser step, on smooth random images with an empty mask, prototypes
fitted on 40 such images (K = 4). Two measures: the floating-point operations of one step (torch's FlopCounterMode,
forward + backward: exact, independent of the machine's load), and the time, in interleaved rounds (one step of
each size per round, so a machine whose load changes meanwhile slows them alike), as the fastest round (the least
disturbed on a shared machine) with the ratio to 256 x 256. Candidate sizes: the square default, and
native-aspect sizes of the shared sets (kolektor ~630 x 250 portrait: [512, 192], [640, 256]; tire 300 x 400:
[288, 384], [192, 256]).

Usage: python bench/input_size_cost.py [--rounds N] [--threads T]
Prints a markdown table and writes bench/results/input_size_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from prn_lightning.models.prn import PRNLoss, PRNNetwork

REPO = Path(__file__).resolve().parents[1]
SIZES = ((256, 256), (512, 192), (640, 256), (288, 384), (192, 256), (320, 320))
BATCH, NUM_NORMAL = 8, 40


def images(n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Smooth random [0, 1] images: low-frequency noise plus grain."""
    coarse = torch.rand(n, 3, size[0] // 16, size[1] // 16, generator=generator)
    smooth = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.rand(n, 3, *size, generator=generator)).clamp_(0, 1)


def build(size: tuple[int, int]):
    cfg = OmegaConf.load(REPO / "experiments" / "model" / "base.yaml").model
    torch.manual_seed(0)
    network = PRNNetwork.from_config(cfg, list(size))
    generator = torch.Generator().manual_seed(0)
    features = network.extract_prototype_features(images(NUM_NORMAL, size, generator).split(BATCH))
    network.prototypes.fit(features, ratio=0.1, iterations=5, seed=0)
    network.train()
    loss = PRNLoss(**{k: float(v) for k, v in cfg.loss.items()})
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    batch = images(BATCH, size, generator)
    mask = torch.zeros(BATCH, 1, *size)
    return network, loss, optimiser, batch, mask


def step(network, loss, optimiser, batch, mask) -> float:
    start = time.perf_counter()
    optimiser.zero_grad(set_to_none=True)
    value = loss(network(batch), mask)
    value = value[0] if isinstance(value, tuple) else value
    value.backward()
    optimiser.step()
    return time.perf_counter() - start


def step_flops(network, loss, optimiser, batch, mask) -> int:
    """Floating-point operations of forward + loss + backward (the optimiser step is negligible)."""
    counter = FlopCounterMode(display=False)
    with counter:
        optimiser.zero_grad(set_to_none=True)
        value = loss(network(batch), mask)
        (value[0] if isinstance(value, tuple) else value).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setups = {size: build(size) for size in SIZES}
    flops = {size: step_flops(*setup) for size, setup in setups.items()}  # also the warm-up
    times: dict[tuple[int, int], list[float]] = {size: [] for size in SIZES}
    for _ in range(args.rounds):
        for size, setup in setups.items():
            times[size].append(step(*setup))
    base, base_flops = min(times[SIZES[0]]), flops[SIZES[0]]
    rows = []
    print("| data.image_size | pixels | GFLOP / step (batch 8) | FLOPs | s / step, fastest round | time |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for size in SIZES:
        fastest = min(times[size])
        pixels = size[0] * size[1] / (256 * 256)
        rows.append({"size": list(size), "pixel_ratio": pixels, "gflop_per_step": flops[size] / 1e9,
                     "flop_ratio": flops[size] / base_flops, "fastest_s_per_step": fastest,
                     "median_s_per_step": statistics.median(times[size]), "time_ratio": fastest / base})
        print(f"| {list(size)} | {pixels:.2f}x | {flops[size] / 1e9:.0f} | {flops[size] / base_flops:.2f}x "
              f"| {fastest:.2f} | {fastest / base:.2f}x |")
    out = REPO / "bench" / "results" / "input_size_cost.json"
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "threads": args.threads, "batch": BATCH, "rounds": args.rounds,
                               "load_average": os.getloadavg(), "sizes": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
