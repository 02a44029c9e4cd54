"""`prn table`: aggregation of finished run directories into I / P / O / A tables (hand-made run directories)."""
from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prn_lightning.config import load_config
from prn_lightning.workflows.table import NoFinishedRunsError, build_table, find_runs, summarise

METRIC_NAMES = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")


def make_run(run_dir: Path, overrides: list[str], metrics: dict[str, float]) -> Path:
    """A finished run as the train workflow leaves it: the resolved config.yaml and metrics.json."""
    cfg = load_config(overrides)
    run_dir.mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    payload = {**metrics, "dataset": str(cfg.data.dataset), "category": str(cfg.data.category), "seed": int(cfg.seed)}
    (run_dir / "metrics.json").write_text(json.dumps(payload))
    return run_dir


def metrics_for(ratio: float, category: str, seed: int) -> dict[str, float]:
    """Distinct, reproducible metric values per run so every mean and std can be checked by hand."""
    base = {"texture": 0.80, "object": 0.60}[category] + ratio / 10 + seed / 100
    return {name: round(base + i / 1000, 6) for i, name in enumerate(METRIC_NAMES)}


@pytest.fixture
def prototype_sweep(tmp_path: Path) -> Path:
    """runs/sweeps/prototype_ratio laid out like `prn sweep` does: 2 ratios x 2 categories x 2 seeds."""
    sweep_dir = tmp_path / "sweeps" / "prototype_ratio"
    for category in ("texture", "object"):
        for ratio in (0.1, 0.05):
            for seed in (0, 1):
                make_run(sweep_dir / category / f"prototype_ratio-{ratio}" / f"seed{seed}",
                         [f"data.category={category}", f"model.prototype_ratio={ratio}", f"seed={seed}"],
                         metrics_for(ratio, category, seed))
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "prototype_ratio",
                                                      "parameters": {"model.prototype_ratio": [0.05, 0.1, 0.2]}}))
    return sweep_dir


def test_rows_follow_the_sweep_order_with_mean_and_std_over_seeds(prototype_sweep: Path) -> None:
    markdown, csv_path = build_table(prototype_sweep, logger="none")
    lines = markdown.strip().splitlines()
    assert lines[0] == "| prototype_ratio | category | I | P | O | A | seeds |"
    body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [(row[0], row[1]) for row in body] == [
        ("0.05", "object"), ("0.05", "texture"), ("0.05", "**mean**"),
        ("0.1", "object"), ("0.1", "texture"), ("0.1", "**mean**"),
    ]
    # texture, ratio 0.05: image AUROC of seeds 0 and 1 = 0.805 and 0.815 -> 81.0 ± 0.7 (sample std)
    expected_std = statistics.stdev([80.5, 81.5])
    assert body[1][2] == f"81.0 ± {expected_std:.1f}"
    # mean over categories of ratio 0.1: (0.81 + 0.61) / 2 + 0.005 = 0.715 for seeds {0, 1} -> 71.5 ± 0.7
    assert body[5][2] == f"71.5 ± {expected_std:.1f}" and body[5][6] == "2"
    assert (prototype_sweep / "table.md").read_text() == markdown

    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert csv_path == prototype_sweep / "table.csv"
    assert list(rows[0]) == ["model.prototype_ratio", "category", "num_runs", "seeds",
                             "I", "I_std", "P", "P_std", "O", "O_std", "A", "A_std"]
    texture = rows[1]
    assert texture["category"] == "texture" and texture["seeds"] == "0 1" and texture["num_runs"] == "2"
    assert float(texture["A"]) == pytest.approx(100 * (0.81 + 0.003))
    assert float(rows[2]["I"]) == pytest.approx(100 * (0.81 + 0.61) / 2)


def test_without_sweep_json_rows_group_by_the_config_keys_that_differ(tmp_path: Path) -> None:
    for msa in (True, False):
        for seed in (3, 4):
            make_run(tmp_path / f"msa{msa}-{seed}", [f"model.use_msa={msa}", f"seed={seed}"],
                     dict.fromkeys(METRIC_NAMES, 0.9 if msa else 0.7))
    table = summarise(find_runs(tmp_path))
    assert table.keys == ["model.use_msa"]  # seed and run_dir differ too, but are bookkeeping
    assert [(row.setting, row.category, row.values["I"], row.stds["I"]) for row in table.rows] == [
        ((False,), "texture", pytest.approx(70.0), pytest.approx(0.0)),
        ((True,), "texture", pytest.approx(90.0), pytest.approx(0.0)),
    ]
    markdown, _ = build_table(tmp_path, logger="none")
    assert "| off | texture | 70.0 ± 0.0 |" in markdown


def test_unfinished_runs_are_ignored_and_an_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    unfinished = tmp_path / "runs" / "synthetic" / "texture" / "20260101-000000"
    unfinished.mkdir(parents=True)
    OmegaConf.save(load_config([]), unfinished / "config.yaml")
    with pytest.raises(NoFinishedRunsError, match=re.escape(str(tmp_path / "runs"))):
        build_table(tmp_path / "runs", logger="none")
    with pytest.raises(NoFinishedRunsError, match="does not exist"):
        build_table(tmp_path / "missing", logger="none")


def test_table_is_logged_to_an_offline_wandb_run(prototype_sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    build_table(prototype_sweep)
    tables = list((prototype_sweep / "wandb").glob("offline-run-*/files/media/table/results_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"] == ["prototype_ratio", "category", "I", "P", "O", "A", "seeds"]
    assert len(logged["data"]) == 6 and logged["data"][2][1] == "**mean**"


def test_runs_of_several_sweeps_keep_their_sweep_and_repeated_seeds_are_averaged(tmp_path: Path) -> None:
    for sweep, key, values in (("modules", "model.use_msa", (True, False)),
                               ("seen_anomalies", "data.num_seen_anomalies", (1, 5))):
        sweep_dir = tmp_path / "sweeps" / sweep
        for value in values:
            for copy in ("a", "b"):  # the same setting and seed twice: one seed, not two
                make_run(sweep_dir / "texture" / f"{value}{copy}" / "seed0", [f"{key}={value}", "seed=0"],
                         dict.fromkeys(METRIC_NAMES, 0.5 if copy == "a" else 0.7))
        (sweep_dir / "sweep.json").write_text(json.dumps({"name": sweep, "parameters": {key: list(values)}}))
    table = summarise(find_runs(tmp_path / "sweeps"))
    assert table.keys == ["sweep", "model.use_msa", "data.num_seen_anomalies"]
    assert [row.setting for row in table.rows] == [
        ("modules", True, 10), ("modules", False, 10), ("seen_anomalies", True, 1), ("seen_anomalies", True, 5)]
    assert all(row.values["A"] == pytest.approx(60.0) and row.stds["A"] is None and row.seeds == [0]
               for row in table.rows)
