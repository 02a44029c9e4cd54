"""What bfloat16 autocast would buy a CPU training step (not the default: it changes what is computed).

Times the same step as bench/profile_training_step.py (batch 8, 256 px, bundled Lite0, Adam) in float32 and under
torch.autocast("cpu", bfloat16), alternating blocks, and prints the median step time of each and their ratio.

Usage: .venv/bin/python bench/bf16_training_step.py [--threads N] [--steps N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from profile_training_step import build  # noqa: I001 (bench/ is the script's folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network, loss_fn, images, masks = build()
    network.train()
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    times: dict[str, list[float]] = {"float32": [], "bfloat16 autocast": []}
    for block in range(4):
        name = "bfloat16 autocast" if block % 2 else "float32"
        for step in range(args.steps + 1):  # one untimed step per block
            start = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "float32"):
                logits = network(images)
            loss_fn(logits.float(), masks)[0].backward()
            optimiser.step()
            if step:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: {value:.3f} s per step ({8 / value:.2f} images/s)")
    print(f"ratio: {medians['float32'] / medians['bfloat16 autocast']:.2f}x, torch threads {args.threads}")


if __name__ == "__main__":
    main()
