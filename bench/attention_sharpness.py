"""How far from uniform a trained run's multi-size attention is: does it attend, or average its patches?

Each MSA head computes softmax(Q K^T / D) over the tokens of one patch size, D being the token dimension
(channels x patch pixels). If the logits are tiny the weights are uniform and the head is a plain mean over its
patches. For the run's best checkpoint, on the first validation batches (held-out normals and simulated anomalies;
the test split is not read), it prints per MSA block and per head with 4 and 16 tokens the mean standard deviation of
a query's logits and the mean of its largest weight (uniform: 1 / tokens). Analysis only: it chooses nothing.

    .venv/bin/python bench/attention_sharpness.py runs/quality/kolektor/prn-seed42 [--batches 2]
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor

from common import finished_run  # bench/ is sys.path[0] when run as a script
from prn_lightning.models.prn.attention import MultiSizeAttentionBlock, patch_sizes

HEADS = slice(1, 3)  # the heads with 4 and 16 tokens (the first head has one token: nothing to weigh)


def head_statistics(block: MultiSizeAttentionBlock, x: Tensor) -> list[tuple[int, float, float]]:
    """(tokens, mean logit std per query, mean largest weight per query) for the block's heads in HEADS."""
    qkv = block.qkv(x)
    batch, channels3, height, width = qkv.shape
    channels = channels3 // 3
    rows = []
    for ph, pw in patch_sizes(height, width, block.num_sizes)[HEADS]:
        nh, nw = height // ph, width // pw
        tokens = (qkv[:, :, :nh * ph, :nw * pw].reshape(batch, 3, channels, nh, ph, nw, pw)
                  .permute(1, 0, 3, 5, 2, 4, 6).reshape(3, batch, nh * nw, channels * ph * pw))
        q, k = tokens[0], tokens[1]
        logits = torch.bmm(q, k.transpose(1, 2)) / q.shape[-1]
        weights = torch.softmax(logits, dim=-1)
        rows.append((nh * nw, logits.std(dim=-1).mean().item(), weights.amax(dim=-1).mean().item()))
    return rows


def sharpness(run: Path, batches: int) -> list[str]:
    """Report lines for one run."""
    _, datamodule, module = finished_run(run, "fit")
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    blocks = {name: m for name, m in module.network.named_modules() if isinstance(m, MultiSizeAttentionBlock)}

    def recorder(name: str):
        def record(block: MultiSizeAttentionBlock, args: tuple[Tensor, ...]) -> None:
            for tokens, logit_std, top_weight in head_statistics(block, args[0]):
                totals = sums[(name, tokens)]
                totals[0] += logit_std
                totals[1] += top_weight
                totals[2] += 1

        return record

    for name, block in blocks.items():
        block.register_forward_pre_hook(recorder(name))
    with torch.inference_mode():
        for index, batch in enumerate(datamodule.val_dataloader()):
            if index == batches:
                break
            module.network(batch["image"])
    lines = [f"{run} (best checkpoint, {batches} validation batches)"]
    for (name, tokens), (logit_std, top_weight, count) in sums.items():
        lines.append(f"  {name:<24} {tokens:3d} tokens: logit std {logit_std / count:.1e}, "
                     f"largest weight {top_weight / count:.3f} (uniform {1 / tokens:.3f})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with checkpoints/best.ckpt")
    parser.add_argument("--batches", type=int, default=2, help="validation batches to read (default 2)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    for run in arguments.runs:
        print("\n".join(sharpness(run, arguments.batches)), flush=True)


if __name__ == "__main__":
    main()
