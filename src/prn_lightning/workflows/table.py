"""Paper-style result tables from finished run directories: I / P / O / A in percent, per category and on average.

A finished run is a directory with metrics.json and config.yaml. Rows are grouped by the swept values: the
parameters recorded in sweep.json by `prn sweep` when there is one, else the config keys whose values differ across
the runs. Several seeds of one setting give `mean ± std` (sample standard deviation over seeds).
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from prn_lightning.metrics.names import METRICS

MEAN_ROW = "mean"
SWEEP_KEY = "sweep"  # group key naming the sweep of a run when a table spans several sweeps
# Bookkeeping keys that differ between runs without being an experimental setting.
IGNORED_PREFIXES = ("seed", "run_dir", "runs_root", "resume", "ckpt", "predict.", "logger.", "data.root",
                    "data.dataset", "data.category", "data.url", "data.sha256", "data.num_workers",
                    "trainer.enable_progress_bar")


class NoFinishedRunsError(FileNotFoundError):
    """The folder holds no finished run; the message names it and says how to make one."""


@dataclass
class FinishedRun:
    """One run directory with its metrics, its flattened config and the sweep.json that made it (if any)."""

    run_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    sweep: dict[str, Any] | None = None

    @property
    def category(self) -> str:
        return str(self.metrics.get("category", self.config.get("data.category")))

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset", self.config.get("data.dataset")))

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed", self.config.get("seed"))

    def value(self, key: str) -> Any:
        """A config value by dotted key, or the sweep's name for `sweep`."""
        if key == SWEEP_KEY:
            return (self.sweep or {}).get("name")
        return self.config.get(key)


@dataclass
class TableRow:
    """One line of the table: a setting (values of the group keys) on one category, or the mean over categories."""

    setting: tuple[Any, ...]
    category: str
    seeds: list[Any]
    values: dict[str, float]  # metric letter -> mean in percent (nan when missing)
    stds: dict[str, float | None]  # metric letter -> std over seeds in percent (None for a single seed)
    runs: list[FinishedRun] = field(default_factory=list, repr=False)


@dataclass
class ResultTable:
    keys: list[str]  # group keys (swept config keys), in order
    rows: list[TableRow]

    @property
    def headers(self) -> list[str]:
        leaves = [key.rsplit(".", 1)[-1] for key in self.keys]
        names = leaves if len(set(leaves)) == len(leaves) else self.keys
        return [*names, "category", *(letter for _, letter, _ in METRICS), "seeds"]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(tree, list):
        return {prefix[:-1]: tuple(tree)}
    return {prefix[:-1]: tree}


def _find_sweep(run_dir: Path) -> dict[str, Any] | None:
    """The sweep.json of the sweep a run belongs to (`prn sweep` puts runs at <sweep>/<category>/<combo>/seed<s>)."""
    for parent in list(run_dir.parents)[:3]:
        path = parent / "sweep.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
    return None


def find_runs(runs_dir: str | Path) -> list[FinishedRun]:
    """Every finished run (metrics.json + config.yaml) under `runs_dir`, sorted by path."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise NoFinishedRunsError(f"runs directory {root} does not exist; pass the folder that holds your runs "
                                  "(e.g. runs/ or runs/sweeps/prototype_ratio)")
    runs = []
    for metrics_path in sorted(root.rglob("metrics.json")):
        run_dir = metrics_path.parent
        if not (run_dir / "config.yaml").is_file():
            continue  # e.g. a `prn test` folder inside a run: its config is the run's own
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{metrics_path} is not valid JSON ({err}); delete the run or rerun it") from err
        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
        runs.append(FinishedRun(run_dir, metrics, _flatten(config), _find_sweep(run_dir)))
    if not runs:
        raise NoFinishedRunsError(f"no finished runs under {root} (a finished run has metrics.json and config.yaml); "
                                  "make some with `prn train` or `prn sweep`")
    return runs


def group_keys(runs: list[FinishedRun]) -> tuple[list[str], dict[str, list[Any]]]:
    """The keys rows are grouped by, and for each the order of its values (sweep file order when known).

    Runs of several sweeps (e.g. `prn table runs/sweeps`) get a leading `sweep` key, so each sweep's rows stay
    together as in the paper's separate tables.
    """
    order: dict[str, list[Any]] = {}
    sweeps = list(dict.fromkeys(run.value(SWEEP_KEY) for run in runs))
    if len(sweeps) > 1:
        order[SWEEP_KEY] = sweeps
    for run in runs:
        for key, values in (run.sweep or {}).get("parameters", {}).items():
            order.setdefault(key, [])
            order[key] += [v for v in values if v not in order[key]]
    if not order:
        for key in sorted({k for run in runs for k in run.config}):
            if not key.startswith(IGNORED_PREFIXES) and len({repr(run.value(key)) for run in runs}) > 1:
                order[key] = []
    for key, values in order.items():
        extra = {run.value(key) for run in runs} - set(values)
        values += sorted(extra, key=lambda v: (type(v).__name__, str(v)))
    return list(order), order


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None


def _per_seed(group: list[FinishedRun], name: str) -> dict[Any, float]:
    """Metric `name` in percent per seed (repeated runs of one seed are averaged first: std is over seeds)."""
    values: dict[Any, list[float]] = defaultdict(list)
    for run in group:
        value = run.metrics.get(name)
        values[run.seed].append(float(value) * 100 if isinstance(value, (int, float)) else math.nan)
    return {seed: _mean_std(v)[0] for seed, v in values.items()}


def summarise(runs: list[FinishedRun]) -> ResultTable:
    """Rows per (setting, category) with mean ± std over seeds, plus a mean-over-categories row per setting."""
    keys, order = group_keys(runs)
    several_datasets = len({run.dataset for run in runs}) > 1
    cells: dict[tuple, dict[str, list[FinishedRun]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        category = f"{run.dataset}/{run.category}" if several_datasets else run.category
        cells[tuple(run.value(key) for key in keys)][category].append(run)

    def setting_order(setting: tuple) -> tuple:
        return tuple(order[key].index(value) for key, value in zip(keys, setting))

    rows = []
    for setting in sorted(cells, key=setting_order):
        per_category = cells[setting]
        for category in sorted(per_category):
            group = per_category[category]
            stats = {letter: _mean_std(list(_per_seed(group, name).values())) for name, letter, _ in METRICS}
            rows.append(TableRow(setting, category, sorted({r.seed for r in group}, key=str),
                                 {k: m for k, (m, _) in stats.items()}, {k: s for k, (_, s) in stats.items()}, group))
        if len(per_category) > 1:
            rows.append(_mean_row(setting, per_category))
    return ResultTable(keys, rows)


def _mean_row(setting: tuple, per_category: dict[str, list[FinishedRun]]) -> TableRow:
    """Mean over categories; its std is over seeds of the per-seed category means (seeds present everywhere)."""
    common = set.intersection(*({r.seed for r in group} for group in per_category.values()))
    values, stds = {}, {}
    for name, letter, _ in METRICS:
        per_category_seed = [_per_seed(group, name) for group in per_category.values()]
        values[letter] = _mean_std([_mean_std(list(p.values()))[0] for p in per_category_seed])[0]
        stds[letter] = _mean_std([_mean_std([p[s] for p in per_category_seed])[0] for s in common])[1]
    runs = [r for group in per_category.values() for r in group]
    return TableRow(setting, MEAN_ROW, sorted(common, key=str), values, stds, runs)


def _cell(mean: float, std: float | None) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f} ± {std:.1f}" if std is not None else f"{mean:.1f}"


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "–" if value is None else str(value)


def table_cells(table: ResultTable) -> list[list[str]]:
    """The table as display strings, one list per row, in `table.headers` order."""
    lines = []
    for row in table.rows:
        category = f"**{row.category}**" if row.category == MEAN_ROW else row.category
        metrics = [_cell(row.values[letter], row.stds[letter]) for _, letter, _ in METRICS]
        lines.append([*map(format_value, row.setting), category, *metrics, str(len(row.seeds))])
    return lines


def to_markdown(table: ResultTable) -> str:
    headers = table.headers
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(table)]
    return "\n".join(lines) + "\n"


def write_csv(table: ResultTable, path: Path) -> Path:
    """Machine-readable: one column per key, then each metric's mean and std in percent."""
    columns = [*table.keys, "category", "num_runs", "seeds"]
    for _, letter, _ in METRICS:
        columns += [letter, f"{letter}_std"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in table.rows:
            line = [*row.setting, row.category, len(row.runs), " ".join(map(str, row.seeds))]
            for _, letter, _ in METRICS:
                std = row.stds[letter]
                line += ["" if math.isnan(row.values[letter]) else round(row.values[letter], 3),
                         "" if std is None else round(std, 3)]
            writer.writerow(line)
    return path


def log_table_to_wandb(table: ResultTable, runs_dir: Path, project: str, entity: str | None) -> None:
    """A `results` wandb.Table in a run of job type `table` (offline without an API key, synced later)."""
    import wandb

    from prn_lightning.loggers.wandb_run import resolve_wandb_mode

    mode = resolve_wandb_mode("auto")
    if mode == "disabled":
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=project, entity=entity, dir=str(runs_dir), job_type="table", mode=mode,
                     name=f"table-{runs_dir.resolve().name}", config={"runs_dir": str(runs_dir), "keys": table.keys})
    try:
        run.log({"results": wandb.Table(columns=table.headers, data=table_cells(table))})
    finally:
        run.finish()


def build_table(runs_dir: str | Path, logger: str = "wandb") -> tuple[str, Path]:
    """Write table.md and table.csv in `runs_dir`, print the markdown, log it to W&B unless `logger="none"`."""
    if logger not in ("wandb", "none"):
        raise ValueError(f"logger={logger!r} must be wandb or none")
    runs_dir = Path(runs_dir)
    runs = find_runs(runs_dir)
    table = summarise(runs)
    markdown = to_markdown(table)
    (runs_dir / "table.md").write_text(markdown)
    csv_path = write_csv(table, runs_dir / "table.csv")
    print(markdown)
    if logger == "wandb":
        project = str(runs[0].config.get("logger.project") or "prn-lightning")
        entity = runs[0].config.get("logger.entity")
        log_table_to_wandb(table, runs_dir, project, entity)
    return markdown, csv_path
