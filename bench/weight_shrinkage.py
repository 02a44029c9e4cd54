"""How far training moved the trainable weights' scale from their initial scale, per part of the network.

Adam's `weight_decay` is an L2 term added to the gradient before Adam normalises it, so wherever the loss gradient
is weaker than decay x weight the update pulls the weight towards zero at about the learning rate per step, whatever
the weight's size. This reads a finished run's checkpoint and a freshly initialised network built from the run's own
config (same shapes, same initialisation), and prints, per part, the mean |w| of the trained weights over the mean
|w| at initialisation (1.0: scale kept; 0.01: shrunk a hundredfold) and the share of the optimiser's first moment
that the decay term accounts for at the end of the run. Analysis only: it chooses nothing.

    .venv/bin/python bench/weight_shrinkage.py runs/quality/magnetic_tile/prn-seed42 [--checkpoint last]
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from prn_lightning.models.prn.lightning_module import RUN_CONFIG_KEY
from prn_lightning.workflows.module_factory import build_module

PARTS = (  # (label, parameter-name prefix), first match wins
    ("attention Q/K/V projections", "network.attention.stages."),
    ("attention fusion", "network.attention_fusion."),
    ("feature and residual fusion", "network.feature_fusion."),
    ("feature and residual fusion", "network.residual_fusion."),
    ("decoder", "network.decoder."),
)


def part_of(name: str) -> str | None:
    if name.startswith("network.attention.stages.") and ".qkv." not in name:
        return "attention output blocks"
    return next((label for label, prefix in PARTS if name.startswith(prefix)), None)


def shrinkage(run: Path, checkpoint: str) -> list[str]:
    """Report lines for one run: per part, weights (conv and linear kernels only), trained / initial mean |w|."""
    saved = torch.load(run / "checkpoints" / f"{checkpoint}.ckpt", map_location="cpu", weights_only=False)
    config = OmegaConf.create(saved[RUN_CONFIG_KEY])
    torch.manual_seed(int(config.seed))
    initial = dict(build_module(config, pretrained_backbone=False).named_parameters())
    trained = saved["state_dict"]
    decay = float(config.model.optimizer.weight_decay)
    moments = [state["exp_avg"] for _, state in sorted(saved["optimizer_states"][0]["state"].items())]
    trainable = [name for name, p in initial.items() if p.requires_grad]
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # |w0|, |w|, |decay w|, |moment|
    for name, moment in zip(trainable, moments, strict=True):
        part = part_of(name)
        if part is None or initial[name].dim() < 2:  # kernels only: biases and norm scales start at 0 / 1
            continue
        weight = trained[name].float()
        totals = sums[part]
        totals[0] += initial[name].detach().abs().sum().item()
        totals[1] += weight.abs().sum().item()
        totals[2] += (decay * weight).abs().sum().item()
        totals[3] += moment.abs().sum().item()
    lines = [f"{run} ({checkpoint}, epoch {saved['epoch']}, weight decay {decay:g})"]
    for part, (initial_sum, trained_sum, decay_sum, moment_sum) in sums.items():
        lines.append(f"  {part:<30} trained / initial mean |w|: {trained_sum / initial_sum:.3f}; "
                     f"decay term / first moment: {decay_sum / moment_sum:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with checkpoints/")
    parser.add_argument("--checkpoint", default="last", choices=("last", "best"),
                        help="which checkpoint to read (default: last, which holds the optimiser state at the end)")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    for run in arguments.runs:
        print("\n".join(shrinkage(run, arguments.checkpoint)), flush=True)


if __name__ == "__main__":
    main()
