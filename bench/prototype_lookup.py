"""Whole-map nearest-prototype lookup time: one batch of 8, the three prototype stages of the bundled
EfficientNet-Lite0 at 256 px (24 x 64 x 64, 40 x 32 x 32, 80 x 16 x 16), random features, torch lookup.

K = 10 %, 40 % and 100 % of 540 training normals (the paper's ratio, magnetic_tile's and tire's, every normal), with
leave-one-out (training) and without (validation, test). Medians of `--repeats` batches after one warm-up lookup.
To time another commit, put its source first on the path:

    .venv/bin/python bench/prototype_lookup.py
    git worktree add /tmp/before dc82c3d && PYTHONPATH=/tmp/before/src .venv/bin/python bench/prototype_lookup.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from prn_lightning.models.prn.prototypes import PrototypeBank

SHAPES = ((24, 64, 64), (40, 32, 32), (80, 16, 16))
NORMALS, BATCH = 540, 8


def batch_lookup_ms(bank: PrototypeBank, queries: list[torch.Tensor], members: torch.Tensor | None,
                    repeats: int) -> float:
    """Median milliseconds to look up one batch at every stage."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for stage, query in enumerate(queries):
            bank.nearest(stage, query, members)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    normals = [torch.randn(NORMALS, *shape, generator=generator) for shape in SHAPES]
    queries = [torch.randn(BATCH, *shape, generator=generator) for shape in SHAPES]
    print(f"| K (of {NORMALS}) | fit | lookup, leave-one-out | lookup, plain |")
    print("| --- | --- | --- | --- |")
    for ratio in (0.1, 0.4, 1.0):
        bank = PrototypeBank(len(SHAPES))
        started = time.perf_counter()
        bank.fit(normals, ratio=ratio, iterations=25, seed=0)
        fit = time.perf_counter() - started
        left_out = batch_lookup_ms(bank, queries, torch.ones(BATCH, dtype=torch.bool), args.repeats)
        plain = batch_lookup_ms(bank, queries, None, args.repeats)
        print(f"| {bank.counts()[0]} | {fit:.1f} s | {left_out:.0f} ms | {plain:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
