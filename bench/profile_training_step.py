"""Where one CPU training step goes, now and at the baseline commit: batch 8 at 256 px, the bundled
EfficientNet-Lite0 network, Adam.

Forward parts are timed with forward hooks on the network's modules (backbone, fusion blocks, attention, decoder);
"prototype lookup + residuals" is the rest of the forward pass (nearest-prototype search, (F - P*)^2, concatenation,
input normalisation). Backward and the optimiser step are timed as wholes, and torch.profiler lists the operators
that take the most time over fwd + bwd. Medians over the timed steps. The baseline (commit d1546d8, checked out into
a temporary git worktree) runs the same script in its own process; `--threads 1` gives steadier figures on a busy
machine (two intra-op threads stall each other when other processes hold the cores).

Usage: python bench/profile_training_step.py [--steps N] [--threads N]   writes bench/results/profile_step.json
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
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from common import REPO, machine, write_result  # noqa: I001 (bench/ is the script's folder)
from prn_lightning.models.prn import PRNLoss, PRNNetwork

SIZE, BATCH, NUM_NORMAL = 256, 8, 60
BASELINE = "d1546d8"
PARTS = ("backbone", "feature_fusion", "residual_fusion", "attention", "attention_fusion", "decoder")


def textures(n: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random [0, 1] images: low-frequency noise plus grain."""
    coarse = torch.rand(n, 3, SIZE // 16, SIZE // 16, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=generator)).clamp_(0, 1)


def build(seed: int = 0) -> tuple[PRNNetwork, PRNLoss, torch.Tensor, torch.Tensor]:
    cfg = OmegaConf.load(REPO / "experiments" / "model" / "base.yaml").model
    torch.manual_seed(seed)
    network = PRNNetwork.from_config(cfg, SIZE)
    generator = torch.Generator().manual_seed(seed)
    features = network.extract_prototype_features(textures(NUM_NORMAL, generator).split(BATCH))
    network.prototypes.fit(features, ratio=0.1, iterations=int(cfg.kmeans_iterations), seed=seed)
    images = textures(BATCH, generator)
    masks = (torch.rand(BATCH, 1, SIZE, SIZE, generator=generator) > 0.97).float()
    return network, PRNLoss.from_config(cfg.loss), images, masks


class ForwardTimer:
    """Wall time of each named module's forward pass, accumulated per step."""

    def __init__(self, network: PRNNetwork) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        for name in PARTS:
            module = getattr(network, name, None)
            if module is not None:
                module.register_forward_pre_hook(lambda m, a, name=name: self._start.__setitem__(name,
                                                                                                 time.perf_counter()))
                module.register_forward_hook(lambda m, a, o, name=name: self._stop(name))

    def _stop(self, name: str) -> None:
        self.times[name] += time.perf_counter() - self._start[name]


def profile(steps: int) -> dict:
    network, loss_fn, images, masks = build()
    network.train()
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    timer = ForwardTimer(network)
    rows: list[dict[str, float]] = []
    for step in range(steps + 2):  # two warm-up steps
        timer.times.clear()
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        logits = network(images)
        forward_end = time.perf_counter()
        loss, _ = loss_fn(logits, masks)
        loss_end = time.perf_counter()
        loss.backward()
        backward_end = time.perf_counter()
        optimiser.step()
        end = time.perf_counter()
        if step >= 2:
            forward = forward_end - start
            row = dict(timer.times)
            row["prototype_lookup_and_residuals"] = forward - sum(timer.times.values())
            row.update(loss=loss_end - forward_end, backward=backward_end - loss_end, optimiser=end - backward_end,
                       total=end - start)
            rows.append(row)
    median = {name: statistics.median(r.get(name, 0.0) for r in rows) for name in rows[0]}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(network(images), masks)[0].backward()
        optimiser.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    top_ops = [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count} for e in events]
    return {"steps": steps, "batch": BATCH, "image_size": SIZE, "median_s": {k: round(v, 4) for k, v in median.items()},
            "images_per_s": round(BATCH / median["total"], 2), "top_ops": top_ops}


def measure(src: Path, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "--case", "--steps", str(steps), "--threads", str(threads)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"profile failed for {src}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        torch.set_num_threads(args.threads)
        print(json.dumps(profile(args.steps)))
        return
    ours = measure(REPO / "src", args.steps, args.threads)
    with tempfile.TemporaryDirectory(prefix="prn-bench-") as scratch:
        checkout = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), BASELINE], check=True,
                       capture_output=True)
        try:
            baseline = measure(checkout / "src", args.steps, args.threads)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)],
                           capture_output=True)
    print(f"one training step, batch {BATCH}, {SIZE} px, {args.threads} torch threads ({machine()})")
    print(f"  {'part':<32}{'baseline s':>11}{'now s':>9}{'now %':>8}")
    total = ours["median_s"]["total"]
    for name, seconds in ours["median_s"].items():
        print(f"  {name:<32}{baseline['median_s'].get(name, 0.0):>11.3f}{seconds:>9.3f}{100 * seconds / total:>7.1f} %")
    print("top operators now (self CPU, fwd + bwd + step):")
    for op in ours["top_ops"]:
        print(f"  {op['op']:<48}{op['self_cpu_s']:>8.3f} s {op['calls']:>5} calls")
    write_result("profile_step", {**ours, "threads": args.threads, "baseline": baseline, "baseline_commit": BASELINE})


if __name__ == "__main__":
    main()
