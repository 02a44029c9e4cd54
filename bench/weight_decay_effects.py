"""What Adam's weight decay did to a finished run: the trained kernels' scale, and whether its attention attends.

Adam's `weight_decay` is an L2 term added to the gradient before Adam normalises it, so wherever the loss gradient
is weaker than decay x weight the update pulls the weight towards zero at about the learning rate per step, whatever
the weight's size. Two reports per run, analysis only (they choose nothing):

- scale: from the last checkpoint and a freshly initialised network built from the run's own config (same shapes,
  same initialisation), per part the mean |w| of the trained kernels over the mean |w| at initialisation (1.0: scale
  kept; 0.01: shrunk a hundredfold) and the decay term's mean size over that of Adam's first moment at the end of the
  run (near 1: the last updates were mostly decay);
- attention: each MSA head computes softmax(Q K^T s) over the tokens of one patch size, s the run's
  `model.msa_logit_scale` (by default 1 / D, D being the token dimension: channels x patch pixels); with tiny logits
  the weights are uniform and the head is a plain mean over its patches.
  For the best checkpoint, on the first validation batches (held-out normals and simulated anomalies; the test split
  is not read), per MSA block and per head with 4 and 16 tokens: the mean standard deviation of a query's logits and
  the mean of its largest weight (uniform: 1 / tokens).

    .venv/bin/python bench/weight_decay_effects.py runs/quality/magnetic_tile/prn-seed42 [--batches 2]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

from common import finished_run  # bench/ is sys.path[0] when run as a script
from prn_lightning.models.prn.attention import MultiSizeAttentionBlock, logit_scale, patch_sizes, patch_tokens
from prn_lightning.models.prn.lightning_module import RUN_CONFIG_KEY, PRNModule
from prn_lightning.workflows.module_factory import build_module

PARTS = (  # (label, parameter-name prefix), first match wins
    ("attention fusion", "network.attention_fusion."),
    ("feature and residual fusion", "network.feature_fusion."),
    ("feature and residual fusion", "network.residual_fusion."),
    ("decoder", "network.decoder."),
)


def part_of(name: str) -> str | None:
    if name.startswith("network.attention.stages."):
        return "attention Q/K/V projections" if ".qkv." in name else "attention output blocks"
    return next((label for label, prefix in PARTS if name.startswith(prefix)), None)


def optimiser_slots(saved: dict, module: PRNModule) -> list[tuple[str, float, Tensor]]:
    """(parameter name, its group's weight decay, Adam's first moment) in the saved optimiser's order, which is that
    of the optimiser the run's module builds (its groups and their order)."""
    names = {id(p): name for name, p in module.named_parameters()}
    order = [names[id(p)] for group in module.new_optimiser().param_groups for p in group["params"]]
    optimiser = saved["optimizer_states"][0]
    decay_of = {index: float(group["weight_decay"]) for group in optimiser["param_groups"] for index in group["params"]}
    return [(order[index], decay_of[index], state["exp_avg"])
            for index, state in sorted(optimiser["state"].items())]


def shrinkage(run: Path) -> list[str]:
    """Report lines for one run: per part, weights (conv and linear kernels only), trained / initial mean |w|."""
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    config = OmegaConf.create(saved[RUN_CONFIG_KEY])
    torch.manual_seed(int(config.seed))
    module = build_module(config, pretrained_backbone=False)
    initial = dict(module.named_parameters())
    trained = saved["state_dict"]
    decay = float(config.model.optimizer.weight_decay)
    trainable = [name for name, p in initial.items() if p.requires_grad]
    slots = optimiser_slots(saved, module)
    if len(slots) != len(trainable):
        raise SystemExit(f"{run}: the optimiser holds {len(slots)} parameters, the run's config builds "
                         f"{len(trainable)}")
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # |w0|, |w|, |decay w|, |moment|
    for name, group_decay, moment in slots:
        part = part_of(name)
        if part is None or initial[name].dim() < 2:  # kernels only: biases and norm scales start at 0 / 1
            continue
        weight = trained[name].float()
        totals = sums[part]
        totals[0] += initial[name].detach().abs().sum().item()
        totals[1] += weight.abs().sum().item()
        totals[2] += (group_decay * weight).abs().sum().item()
        totals[3] += moment.abs().sum().item()
    qkv_decay = config.model.optimizer.get("qkv_weight_decay")
    own = "" if qkv_decay is None else f", Q/K/V {float(qkv_decay):g}"
    lines = [f"{run} (last checkpoint, epoch {saved['epoch']}, weight decay {decay:g}{own})"]
    for part, (initial_sum, trained_sum, decay_sum, moment_sum) in sums.items():
        lines.append(f"  {part:<30} trained / initial mean |w|: {trained_sum / initial_sum:.3f}; "
                     f"decay term / first moment: {decay_sum / moment_sum:.2f}")
    return lines


HEADS = slice(1, 3)  # the heads with 4 and 16 tokens (the first head has one token: nothing to weigh)


def head_statistics(block: MultiSizeAttentionBlock, x: Tensor) -> list[tuple[int, float, float]]:
    """(tokens, mean logit std per query, mean largest weight per query) for the block's heads in HEADS."""
    qkv = block.qkv(x)
    rows = []
    for patch in patch_sizes(qkv.shape[-2], qkv.shape[-1], block.num_sizes)[HEADS]:
        q, k, _ = patch_tokens(qkv, patch)  # the tokens the network's own heads attend over
        logits = torch.bmm(q, k.transpose(1, 2)) * logit_scale(q.shape[-1], block.scale_rule)
        weights = torch.softmax(logits, dim=-1)
        rows.append((q.shape[1], logits.std(dim=-1).mean().item(), weights.amax(dim=-1).mean().item()))
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
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with checkpoints/last.ckpt and best.ckpt")
    parser.add_argument("--batches", type=int, default=2, help="validation batches for the attention report")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    for run in arguments.runs:
        print("\n".join(shrinkage(run) + sharpness(run, arguments.batches)), flush=True)


if __name__ == "__main__":
    main()
