"""Training throughput of this checkout against the baseline commit, in the same run, on the same data and machine.

The baseline (commit d1546d8, before the speed work) is checked out into a temporary `git worktree` and both run
their own `prn train` (experiment folder_cpu: bundled EfficientNet-Lite0, 256 px, batch 8, 2 loader workers) with
PYTHONPATH pointing at their own src/, in this venv, alternately, `--repeats` times each (bench/train_probe.py times
the steady-state steps and reports the loader wait). Data: ../shared/data/kolektor with the Brodatz textures, else
the embedded synthetic set. Images/s = batch size / the median step time over all timed steps of all runs of a
version; the ratio is ours / baseline, and the median of the ratios of back-to-back run pairs is shown too (load from
other processes comes and goes: short alternating runs expose both versions to it alike).

Writes bench/results/training.json. Usage: python bench/bench_training.py [--repeats N] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import HERE, REPO, SHARED, row, write_result

BASELINE = "d1546d8"
WARMUP = 3
BATCH = 8
TRAINING_TARGET = 2.0   # issue 11: training images/s at least 2x the baseline
LOADER_WAIT_TARGET = 0.05


def data_overrides(scratch: Path) -> tuple[list[str], str]:
    if (SHARED / "kolektor" / "train" / "good").is_dir():
        textures = SHARED / "textures" / "brodatz"
        overrides = ["experiment=folder_cpu", f"data.root={SHARED}", "data.category=kolektor"]
        if textures.is_dir():
            overrides.append(f"data.texture_dir={textures}")
        return overrides, "kolektor (../shared/data), Brodatz textures"
    return ["experiment=synthetic_cpu", f"data.root={scratch / 'synthetic'}"], "embedded synthetic texture set"


def probe(checkout: Path, overrides: list[str], steps: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "WANDB_MODE": "disabled"}
    command = [sys.executable, str(HERE / "train_probe.py"), str(out), str(WARMUP), str(steps), *overrides]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if not out.exists():
        raise RuntimeError(f"training probe failed in {checkout} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="runs of each version, alternating")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per run (after 3 warm-up steps)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prn-bench-") as scratch:
        scratch = Path(scratch)
        baseline = scratch / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), BASELINE], check=True,
                       capture_output=True)
        try:
            data, description = data_overrides(scratch)
            batches = WARMUP + args.steps + 2
            overrides = [*data, "logger=none", f"runs_root={scratch / 'runs'}", "trainer.max_epochs=1",
                         "trainer.enable_progress_bar=false", f"data.samples_per_epoch={BATCH * batches}",
                         f"data.batch_size={BATCH}", "data.num_workers=2", "data.image_size=256"]
            runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
            for repeat in range(args.repeats):
                for name, checkout in (("baseline", baseline), ("ours", REPO)):
                    result = probe(checkout, overrides, args.steps, scratch / f"{name}{repeat}.json")
                    runs[name].append(result)
                    print(f"{name:<9} run {repeat}: {result['images_per_s']:.2f} images/s, "
                          f"median step {result['median_step_s']:.3f} s, loader wait "
                          f"{100 * result['loader_wait_fraction']:.1f} %, batch completion "
                          f"{100 * result['batch_completion_fraction']:.1f} %", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                           capture_output=True)
    median = {name: {"median_step_s": statistics.median(t for r in results for t in r["step_s"]),
                     **{key: statistics.median(r[key] for r in results)
                        for key in ("loader_wait_fraction", "batch_completion_fraction")}}
              for name, results in runs.items()}
    for values in median.values():
        values["images_per_s"] = BATCH / values["median_step_s"]
    ours, base = median["ours"], median["baseline"]
    ratio = ours["images_per_s"] / base["images_per_s"]
    pair_ratios = [o["images_per_s"] / b["images_per_s"] for o, b in zip(runs["ours"], runs["baseline"])]
    rows = [
        row("training images/s (batch 8, 256 px, Lite0, 2 workers)", round(ours["images_per_s"], 2), "images/s",
            peer=round(base["images_per_s"], 2), peer_name=f"baseline {BASELINE}", higher_is_better=True,
            target=f">= {TRAINING_TARGET:g}x baseline", met=ratio >= TRAINING_TARGET,
            note=f"{description}; ratios of back-to-back run pairs: {', '.join(f'{r:.2f}' for r in pair_ratios)}"),
        row("loader wait, fraction of training time", round(100 * ours["loader_wait_fraction"], 2), "%",
            peer=round(100 * base["loader_wait_fraction"], 2), peer_name=f"baseline {BASELINE}",
            target=f"< {100 * LOADER_WAIT_TARGET:g} %", met=ours["loader_wait_fraction"] < LOADER_WAIT_TARGET,
            note="time in the DataLoader iterator waiting for the workers"),
        row("batch completion in the main process (Perlin, blends)", round(100 * ours["batch_completion_fraction"], 2),
            "%", peer=round(100 * base["batch_completion_fraction"], 2), peer_name=f"baseline {BASELINE}"),
    ]
    write_result("training", {"baseline": BASELINE, "data": description, "warmup_steps": WARMUP,
                              "timed_steps": args.steps, "repeats": args.repeats, "median": median, "runs": runs,
                              "ratio_images_per_s": ratio, "pair_ratios": pair_ratios, "rows": rows})
    print(f"training images/s: ours {ours['images_per_s']:.2f}, baseline {base['images_per_s']:.2f} "
          f"({ratio:.2f}x, target {TRAINING_TARGET:g}x)")


if __name__ == "__main__":
    main()
