"""Detection quality: PRN's CPU recipe against anomalib's PatchCore on the same test sets, over several seeds.

For each set (the shared real categories kolektor, magnetic_tile, tire, each with its data file
experiments/data/NAME.yaml and, where it has one, its own experiment NAME_cpu.yaml, and the default `make train` run
on the embedded synthetic texture) and each seed, PRN is trained and tested by the CLI in a subprocess (the
experiment's own checkpoint policy), and anomalib 2.7's PatchCore (`PatchcoreModel`, the same bundled
EfficientNet-Lite0 weights, stride-8 and stride-16 stages, coreset 1 %, 9 neighbours) is fitted on the same normal
training images and scored on the same test split: the datamodule is built from the same config and seed, so the
same seen anomalies are removed and the maps are compared at the same resolution with the same exact metrics.
Results (I / P / O / A, mean +- std over seeds, wall times) go to bench/results/quality.md and quality.json. Finished
runs are kept under --runs-root and reused and a run stopped part-way is resumed from its last checkpoint, so a
stopped benchmark continues where it left off.

    make bench-quality                       # 3 seeds, all four sets, --fast-coreset (~2 h 50 min on 2 cores)
    .venv/bin/python bench/quality.py --sets kolektor --seeds 1 --skip-patchcore
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
METRICS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")
REAL_SETS = ("kolektor", "magnetic_tile", "tire")
SEEDS = (42, 43, 44)


def shared_root() -> Path:
    """$PRN_SHARED_DATA, else ../shared/data next to the repository (as tests/conftest.py)."""
    return Path(os.environ.get("PRN_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


def set_overrides(name: str, data_root: Path, textures: Path | None) -> list[str]:
    """The experiment for one set: its own CPU experiment (experiments/experiment/NAME_cpu.yaml) where it has one,
    else the folder CPU experiment with the set's data file (experiments/data/NAME.yaml: its category and input
    size); `make train`'s default for `default`."""
    if name == "default":
        return ["experiment=synthetic_cpu"]
    from prn_lightning.config import experiments_dir

    own = (experiments_dir() / "experiment" / f"{name}_cpu.yaml").is_file()
    overrides = [f"experiment={name}_cpu"] if own else ["experiment=folder_cpu", f"data={name}"]
    overrides.append(f"data.root={data_root}")
    if textures is not None:
        overrides.append(f"data.texture_dir={textures}")
    return overrides


def cli(*arguments: str) -> None:
    command = [sys.executable, "-m", "prn_lightning.cli", *arguments, "logger=none"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def run_prn(overrides: list[str], seed: int, run_dir: Path) -> tuple[dict, dict]:
    """Train + test PRN through the CLI (a fresh process per run), then test its last checkpoint too.

    Returns (the run's own result: the experiment's checkpoint policy, the last checkpoint's result): the evidence for
    choosing best-on-validation or last across sets and seeds. Finished runs are reused, stopped ones resumed (the
    CLI refuses a resume whose command line would change the run's config).
    """
    from prn_lightning.workflows.run_dir import holds_run

    metrics_file, last_file = run_dir / "metrics.json", run_dir / "test-last" / "metrics.json"
    if not metrics_file.is_file():  # a run stopped part-way continues from its last checkpoint
        cli("train", *overrides, f"seed={seed}", f"resume={run_dir}" if holds_run(run_dir) else f"run_dir={run_dir}")
    if not last_file.is_file():
        cli("test", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"run_dir={last_file.parent}")
    return json.loads(metrics_file.read_text()), json.loads(last_file.read_text())


def fast_kcenter_greedy():
    """anomalib's `KCenterGreedy`, with each distance update as one matrix-vector product.

    Same algorithm, projection and random first centre; anomalib's update materialises an N x d difference per
    selected centre (about 1.3 s per centre for kolektor's 225k patches on a loaded 2-core machine, so a 1 % coreset
    takes most of an hour); ||f||^2 - 2 f.c + ||c||^2 reads the features once. The distances agree to float32
    rounding, so the greedy picks can differ only between near-equal candidates.
    """
    from anomalib.models.components import KCenterGreedy

    class FastKCenterGreedy(KCenterGreedy):
        def update_distances(self, cluster_center: int | torch.Tensor | None) -> None:
            if cluster_center is None:
                return
            if getattr(self, "_norms_of", None) is not self.features:
                self._norms_of, self._norms = self.features, self.features.square().sum(dim=1, keepdim=True)
            center = self.features[cluster_center].reshape(-1, 1)
            squared = self._norms - 2.0 * (self.features @ center) + center.square().sum()
            distances = squared.clamp_min(0.0).sqrt()
            self.min_distances = distances if self.min_distances is None else torch.minimum(self.min_distances,
                                                                                            distances)

    return FastKCenterGreedy


def run_patchcore(overrides: list[str], seed: int, out_file: Path, coreset: float, fast_coreset: bool) -> dict:
    """anomalib's PatchCore on the PRN config's data (same seen draw, test set and resolution); cached in out_file."""
    if out_file.is_file():
        return json.loads(out_file.read_text())
    from anomalib.models.image.patchcore import torch_model
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from prn_lightning.config import load_config
    from prn_lightning.data.datamodule import PRNDataModule
    from prn_lightning.metrics import AnomalyMetrics
    from prn_lightning.models.prn.backbone import load_bundled_weights

    if fast_coreset:  # not anomalib's own picks: near-equal candidates may be chosen differently (see its docstring)
        torch_model.KCenterGreedy = fast_kcenter_greedy()
    started = time.time()
    cfg = load_config([*overrides, f"seed={seed}", "logger=none"])
    datamodule = PRNDataModule(cfg.data, seed=seed)
    datamodule.setup("fit")
    torch.manual_seed(seed)  # the coreset's random first centre
    name = str(cfg.model.backbone.name)
    # integer layers = timm feature indices: 2 and 3 are the stride-8 and stride-16 stages (resnet's layer2/layer3)
    model = PatchcoreModel(layers=[2, 3], backbone=name, pre_trained=False, num_neighbors=9)
    extractor = model.feature_extractor.feature_extractor
    load_bundled_weights(extractor, name)
    # the input statistics the backbone's weights expect (timm's pretrained config), as PRNNetwork uses
    mean = torch.tensor(extractor.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(extractor.pretrained_cfg["std"]).view(1, 3, 1, 1)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images - mean) / std

    model.train()
    model.feature_extractor.eval()  # frozen BatchNorm statistics, as anomalib's own training
    with torch.no_grad():
        for batch in datamodule.prototype_dataloader():
            model(normalise(batch["image"]))
        fitted = time.time()
        model.subsample_embedding(coreset)
        selected = time.time()
        model.eval()
        metrics = AnomalyMetrics(list(datamodule.defect_types))
        for batch in datamodule.test_dataloader():
            output = model(normalise(batch["image"]))
            metrics.update(output.anomaly_map[:, 0], batch["mask"][:, 0], output.pred_score, batch["label"],
                           batch["defect_id"])
    values = {k: float(v) for k, v in metrics.compute().items() if k in METRICS}
    values.update(wall_time_s=round(time.time() - started, 1), coreset_s=round(selected - fitted, 1),
                  memory_bank=int(model.memory_bank.shape[0]), num_test_images=len(datamodule.test_samples))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(values, indent=1))
    return values


def mean_std(values: list[float]) -> str:
    """Percent, 'mean +- std' over seeds (sample std; one seed shows the value alone)."""
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def write_report(results: dict, args: argparse.Namespace, out: Path) -> None:
    load = os.getloadavg()
    lines = [
        "# Detection quality: PRN (CPU recipe) vs anomalib PatchCore",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average at the end {load[0]:.1f}; seeds {', '.join(map(str, args.seeds))}; "
        f"`{' '.join(sys.argv)}`. Mean +- sample std over seeds, percent. PatchCore: anomalib 2.7 `PatchcoreModel`, "
        f"bundled Lite0, stages at stride 8 and 16, coreset {args.coreset:g}"
        f"{' (--fast-coreset: approximate greedy picks)' if args.fast_coreset else ''}, 9 neighbours, "
        "same normal training images, same test split (seen anomalies removed) at the same resolution. `PRN` "
        "is the run's own result (its checkpoint policy); `PRN, last checkpoint` tests the last epoch's "
        "weights of the same runs (its wall time is that test pass alone): the evidence for best-on-"
        "validation vs last.",
        "",
        "| set | method | I | P | O | A | wall s (mean) | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, methods in results.items():
        for method, runs in methods.items():
            if not runs:
                continue
            cells = [mean_std([r[m] for r in runs]) for m in METRICS]
            wall = statistics.fmean(r.get("wall_time_s", float("nan")) for r in runs)
            lines.append(f"| {name} | {method} | {' | '.join(cells)} | {wall:.0f} | {len(runs)} |")
    lines += ["", "Per seed:", "", "| set | method | seed | I | P | O | A | wall s |", "| --- " * 8 + "|"]
    for name, methods in results.items():
        for method, runs in methods.items():
            for seed, r in zip(args.seeds, runs):
                cells = " | ".join(f"{100 * r[m]:.1f}" for m in METRICS)
                lines.append(f"| {name} | {method} | {seed} | {cells} | {r.get('wall_time_s', float('nan')):.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=[*REAL_SETS, "default"],
                        help="any of kolektor magnetic_tile tire default")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--data-root", type=Path, default=None, help="shared data root (default: $PRN_SHARED_DATA)")
    parser.add_argument("--textures", type=Path, default=None,
                        help="anomaly sources (default: <data-root>/textures/brodatz)")
    parser.add_argument("--coreset", type=float, default=0.01, help="PatchCore coreset sampling ratio")
    parser.add_argument("--fast-coreset", action="store_true",
                        help="one matrix-vector product per greedy step instead of anomalib's own update (much "
                             "faster on a CPU; picks may differ between near-equal candidates, so not anomalib's own)")
    parser.add_argument("--runs-root", type=Path, default=REPO / "bench" / "results" / "quality-runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quality.md")
    parser.add_argument("--skip-prn", action="store_true")
    parser.add_argument("--skip-patchcore", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for PRN and the shared data config")
    args = parser.parse_args()
    data_root = (args.data_root or shared_root()).resolve()
    textures = args.textures or data_root / "textures" / "brodatz"
    textures = textures if textures.is_dir() else None
    results: dict[str, dict[str, list[dict]]] = {}
    for name in args.sets:
        if name != "default" and not (data_root / name).is_dir():
            print(f"skipping {name}: {data_root / name} does not exist (set PRN_SHARED_DATA)", flush=True)
            continue
        if name == "default":
            from prn_lightning.data.sources.synthetic import ensure_synthetic

            ensure_synthetic(REPO / "data" / "synthetic")
        overrides = set_overrides(name, data_root, textures) + list(args.overrides)
        results[name] = {"PRN": [], "PRN, last checkpoint": [], "PatchCore": []}
        for seed in args.seeds:
            if not args.skip_prn:
                run, last = run_prn(overrides, seed, args.runs_root / name / f"prn-seed{seed}")
                results[name]["PRN"].append(run)
                results[name]["PRN, last checkpoint"].append(last)
            if not args.skip_patchcore:
                out_file = args.runs_root / name / f"patchcore-seed{seed}.json"
                results[name]["PatchCore"].append(run_patchcore(overrides, seed, out_file, args.coreset,
                                                                          args.fast_coreset))
            write_report(results, args, args.out)


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
