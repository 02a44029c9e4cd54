"""Sweeps: the paper's sweep files, W&B/local agreement, and the local runner end to end on a tiny grid."""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from prn_lightning.config import load_config
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.workflows.dashboard import build_dashboard
from prn_lightning.workflows.sweep import (
    SweepFileError,
    SweepRunsFailed,
    export_wandb_sweep,
    format_override,
    load_sweep,
    plan_sweep,
    run_sweep,
)
from prn_lightning.workflows.table import build_table

SWEEPS = Path(__file__).resolve().parents[1] / "experiments" / "sweeps"
WANDB_COMMAND = ["${env}", "prn", "train", "${args_no_hyphens}"]


@pytest.mark.parametrize("name, runs",
                         [("prototype_ratio", 4), ("seen_anomalies", 3), ("modules", 8), ("generation", 4)])
def test_paper_sweep_files_expand_to_valid_configs(name: str, runs: int) -> None:
    spec = load_sweep(SWEEPS / f"{name}.yaml")
    raw = yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())
    assert raw["method"] == "grid" and raw["command"] == WANDB_COMMAND and spec.name == name
    combinations = spec.combinations()
    assert len(combinations) == runs == len({json.dumps(c, sort_keys=True) for c in combinations})
    for combination in combinations:
        cfg = load_config(spec.constants + [format_override(k, v) for k, v in combination.items()])
        assert {k: OmegaConf.select(cfg, k) for k in combination} == combination


def test_wandb_agent_and_local_runner_issue_the_same_overrides(tmp_path: Path) -> None:
    """Render every grid point of the exported file with W&B's own agent code; compare with the local plan."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    fixed = ["data.category=object", "trainer.max_epochs=2"]
    exported_file = export_wandb_sweep(SWEEPS / "modules.yaml", fixed, [0, 1], tmp_path / "w.yaml")
    exported = yaml.safe_load(exported_file.read_text())
    keys = list(exported["parameters"])
    grids = [p["values"] if "values" in p else [p["value"]] for p in exported["parameters"].values()]
    agent = {
        frozenset(
            create_sweep_command_args({"args": {k: {"value": v} for k, v in zip(keys, point)}})["args_no_hyphens"])
        for point in itertools.product(*grids)
    }
    _, seeds, plan = plan_sweep(load_sweep(SWEEPS / "modules.yaml"), fixed, [0, 1], tmp_path)
    local = {frozenset([*run.overrides, f"seed={run.seed}"]) for run in plan}
    assert seeds == [0, 1] and len(plan) == 16
    assert agent == local
    assert {run.run_dir.relative_to(tmp_path).parts[:3] for run in plan} == {("sweeps", "modules", "object")}


def test_sweep_input_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SweepFileError, match="prototype_ratio.yaml"):
        load_sweep(SWEEPS / "prototype_ration.yaml")  # the error lists the sweeps that exist
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: random\nparameters:\n  model.prototype_ratio:\n    values: [0.1]\n")
    with pytest.raises(SweepFileError, match="method: grid"):
        load_sweep(bad)
    with pytest.raises(SweepFileError, match="model.prototype_ratio"):
        run_sweep(SWEEPS / "prototype_ratio.yaml", ["model.prototype_ratio=0.3"], runs_root=tmp_path)
    with pytest.raises(ValueError, match="model.prototype_rati"):
        run_sweep(SWEEPS / "seen_anomalies.yaml", ["model.prototype_rati=0.3"], runs_root=tmp_path)
    assert not (tmp_path / "sweeps").exists()  # nothing ran


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides that make a real training run tiny: 64 px, 8 normal images, 2 steps, random backbone, no W&B."""
    root = tmp_path_factory.mktemp("tiny-data")
    generate_synthetic(root, seed=0, image_size=64, num_train=8, num_test_good=3, num_per_defect=2,
                       categories=("texture",))
    return ["data=folder", f"data.root={root}", "data.category=texture", "data.image_size=64",
            "data.num_seen_anomalies=2", "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0",
            "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "logger=none", "logger.num_map_panels=2",
            "model.backbone.weights=none", "model.msa_blocks=1"]


def _write_sweep(path: Path, name: str, parameters: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "method": "grid", "parameters": parameters,
                                    "command": WANDB_COMMAND}))
    return path


def test_local_sweep_runs_skips_resumes_and_tables(tmp_path: Path, tiny_overrides: list[str], capfd) -> None:
    sweep_file = _write_sweep(tmp_path / "tiny.yaml", "tiny", {"model.prototype_ratio": {"values": [0.25, 1.0]}})
    runs_root = tmp_path / "runs"
    run_dirs = run_sweep(sweep_file, tiny_overrides, seeds=[7], runs_root=runs_root)
    sweep_dir = runs_root / "sweeps" / "tiny"
    assert run_dirs == [sweep_dir / "texture" / f"prototype_ratio-{r}" / "seed7" for r in (0.25, 1.0)]
    for run_dir, ratio in zip(run_dirs, (0.25, 1.0)):
        assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
        cfg = OmegaConf.load(run_dir / "config.yaml")
        assert cfg.model.prototype_ratio == ratio and cfg.seed == 7 and cfg.data.image_size == 64
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert record["parameters"] == {"model.prototype_ratio": [0.25, 1.0]} and record["seeds"] == [7]
    assert record["overrides"] == tiny_overrides and [r["status"] for r in record["runs"]] == ["finished"] * 2
    capfd.readouterr()

    # restart: both runs are skipped, nothing is retrained
    stamps = [(d / "metrics.json").stat().st_mtime_ns for d in run_dirs]
    assert run_sweep(sweep_file, tiny_overrides, seeds=[7], runs_root=runs_root) == run_dirs
    assert capfd.readouterr().out.count("finished earlier, skipped") == 2
    assert [(d / "metrics.json").stat().st_mtime_ns for d in run_dirs] == stamps

    # a run that stopped before writing metrics.json resumes from its last.ckpt
    (run_dirs[1] / "metrics.json").unlink()
    run_sweep(sweep_file, tiny_overrides, seeds=[7], runs_root=runs_root)
    assert (run_dirs[1] / "metrics.json").is_file()
    commands = [line for line in (run_dirs[1] / "train.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and commands[1].endswith("resume=true") and "resume=true" not in commands[0]

    markdown, csv_path = build_table(sweep_dir, logger="none")
    lines = markdown.strip().splitlines()
    assert lines[0] == "| prototype_ratio | category | I | P | O | A | seeds |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["0.25", "1.0"]
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row, run_dir in zip(rows, run_dirs):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for letter, name in (("I", "image_auroc"), ("P", "pixel_auroc"), ("O", "pro"), ("A", "pixel_ap")):
            assert float(row[letter]) == pytest.approx(100 * metrics[name], abs=1e-3)
            assert 0 <= float(row[letter]) <= 100

    index = Path(build_dashboard(sweep_dir))  # real history.csv and maps/*.png
    assert {"metrics_vs_prototype_ratio.png", "loss_curves.png", "per_category.png", "anomaly_maps.png"} <= {
        p.name for p in index.parent.glob("*.png")}


def test_failed_runs_do_not_stop_the_sweep_and_are_reported(tmp_path: Path, tiny_overrides: list[str]) -> None:
    sweep_file = _write_sweep(tmp_path / "broken.yaml", "broken", {"data.category": {"values": ["no_such_category"]}})
    overrides = [o for o in tiny_overrides if not o.startswith("data.category=")]
    with pytest.raises(SweepRunsFailed, match="2 of 2 runs") as failure:
        run_sweep(sweep_file, overrides, seeds=[0, 1], runs_root=tmp_path / "runs")
    assert len(failure.value.run_dirs) == 2
    for run_dir in failure.value.run_dirs:
        assert str(run_dir / "train.log") in str(failure.value)
        assert "no_such_category" in (run_dir / "train.log").read_text()
    record = json.loads((tmp_path / "runs" / "sweeps" / "broken" / "sweep.json").read_text())
    assert [r["status"].split(" (")[0] for r in record["runs"]] == ["failed", "failed"]
