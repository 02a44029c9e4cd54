"""A dashboard of finished runs: a W&B report online, or PNGs plus one self-contained HTML page offline.

Offline (`prn dashboard runs/sweeps/prototype_ratio`): I/P/O/A against each numeric swept value (prototype ratio,
seen-anomaly count), per-category bars, loss curves from history.csv and a grid of anomaly-map panels, written to
<runs_dir>/dashboard/ as PNGs and as index.html with every image inlined, so the page can be mailed or archived.
Online (`prn dashboard ENTITY/PROJECT` with an API key): the same views as a W&B report built with
`wandb-workspaces` over every run of the project.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import re
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from prn_lightning.metrics import names  # noqa: E402
from prn_lightning.workflows.table import (  # noqa: E402
    MEAN_ROW,
    METRICS,
    FinishedRun,
    ResultTable,
    find_runs,
    format_value,
    summarise,
    table_cells,
)

WANDB_PROJECT_PATTERN = re.compile(r"^[\w.-]+/[\w.-]+$")
MAX_MAP_PANELS = 12
MAX_LEGEND_ENTRIES = 12
# What a run logs to W&B (PRNModule, loggers/test_report.py): test metrics, epoch losses, anomaly-map panels.
WANDB_LOSS_KEYS = (names.key(names.TRAIN, names.LOSS) + "_epoch", names.key(names.VAL, names.LOSS))
WANDB_VAL_KEYS = (names.key(names.VAL, "pixel_ap"), names.key(names.VAL, "image_auroc"))
WANDB_MAPS_KEY = names.key(names.TEST, "anomaly_maps")
# history.csv columns drawn as loss curves, with their titles
HISTORY_PANELS = ((names.key(names.TRAIN, names.LOSS), "training loss"),
                  (names.key(names.VAL, names.LOSS), "validation loss"),
                  (names.key(names.VAL, "pixel_ap"), "validation pixel AP"),
                  (names.key(names.VAL, "image_auroc"), "validation image AUROC"))
WANDB_SWEPT_KEYS = ("model.prototype_ratio", "data.num_seen_anomalies")


class DashboardTargetError(ValueError):
    """The dashboard target is neither a runs directory nor a usable W&B project; the message says what to pass."""


def build_dashboard(target: str | Path) -> str:
    """A local dashboard for a runs directory (returns index.html's path), or a W&B report URL for ENTITY/PROJECT."""
    path = Path(target)
    if path.is_dir():
        return str(build_local_dashboard(path))
    if WANDB_PROJECT_PATTERN.match(str(target)):
        from prn_lightning.loggers.wandb_run import wandb_api_key_configured

        if not wandb_api_key_configured():
            raise DashboardTargetError(
                f"{target} looks like a W&B project but no API key is configured (set WANDB_API_KEY or run "
                "`wandb login`); without W&B pass a local runs directory instead, e.g. `prn dashboard runs/`"
            )
        entity, project = str(target).split("/")
        report = make_wandb_report(entity, project)
        report.save()
        print(f"W&B report: {report.url}")
        return str(report.url)
    raise DashboardTargetError(f"dashboard target {target!r} is not a directory; pass a runs directory "
                               "(e.g. runs/sweeps/prototype_ratio) or a W&B project as ENTITY/PROJECT")


# --------------------------------------------------------------------------------------------------- local (PNG/HTML)
def _setting_label(keys: list[str], setting: tuple) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={format_value(v)}" for key, v in zip(keys, setting)) or "all runs"


def _run_label(table: ResultTable, run: FinishedRun) -> str:
    setting = tuple(run.value(key) for key in table.keys)
    prefix = f"{_setting_label(table.keys, setting)} · " if table.keys else ""
    return f"{prefix}{run.category} · seed {run.seed}"


def _save(fig: plt.Figure, path: Path, legend_from: plt.Axes | None) -> None:
    """Save with the legend (when not too long to read) below the panels, where it hides no data."""
    fig.tight_layout()
    handles, labels = legend_from.get_legend_handles_labels() if legend_from is not None else ([], [])
    if labels and len(labels) <= MAX_LEGEND_ENTRIES:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)),
                   fontsize=8, frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _is_numeric_axis(values: list) -> bool:
    return len(set(values)) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_metric_vs_key(table: ResultTable, key: str, path: Path) -> Path:
    """I/P/O/A (mean over categories, error bars: std over seeds) against one numeric swept key."""
    index = table.keys.index(key)
    several_categories = any(row.category == MEAN_ROW for row in table.rows)
    rows = [row for row in table.rows if (row.category == MEAN_ROW) == several_categories]
    others = [k for k in table.keys if k != key]
    lines: dict[tuple, list] = {}
    for row in rows:
        rest = tuple(v for i, v in enumerate(row.setting) if i != index)
        lines.setdefault(rest, []).append(row)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (_, letter, _) in zip(axes, METRICS):
        for rest, line in lines.items():
            line = sorted(line, key=lambda r: r.setting[index])
            xs = [r.setting[index] for r in line]
            ys = [r.values[letter] for r in line]
            errors = [r.stds[letter] or 0.0 for r in line]
            label = _setting_label(others, rest) if others else None
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
        xs_all = [r.setting[index] for r in rows]
        if min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(sorted(set(xs_all)), [str(x) for x in sorted(set(xs_all))])
        ax.minorticks_off()
        ax.set(title=f"{letter} (%)", xlabel=key)
        ax.grid(alpha=0.3)
    scope = "mean over categories" if several_categories else rows[0].category
    fig.suptitle(f"I / P / O / A vs {key} ({scope})")
    _save(fig, path, axes[0] if others else None)
    return path


def plot_per_category(table: ResultTable, path: Path) -> Path:
    """Grouped bars: one group per category, one bar per setting, one panel per metric."""
    rows = [row for row in table.rows if row.category != MEAN_ROW]
    categories = sorted({row.category for row in rows})
    settings = list(dict.fromkeys(row.setting for row in rows))
    width = 0.8 / len(settings)
    fig, axes = plt.subplots(4, 1, figsize=(max(8.0, 0.9 * len(categories) * max(1, len(settings) / 3)), 11),
                             sharex=True)
    for ax, (_, letter, _) in zip(axes, METRICS):
        for number, setting in enumerate(settings):
            cells = {row.category: row for row in rows if row.setting == setting}
            xs = [i + (number - (len(settings) - 1) / 2) * width for i, c in enumerate(categories) if c in cells]
            ys = [cells[c].values[letter] for c in categories if c in cells]
            errors = [cells[c].stds[letter] or 0.0 for c in categories if c in cells]
            ax.bar(xs, ys, width=width, yerr=errors, capsize=2, label=_setting_label(table.keys, setting))
        ax.set_ylabel(f"{letter} (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    fig.suptitle("I / P / O / A per category")
    _save(fig, path, axes[0])
    return path


def _read_history(path: Path) -> dict[str, list[tuple[float, float]]]:
    """history.csv as column -> [(epoch, value)], skipping empty cells (not every metric is logged every epoch).
    Columns of runs from before the `train/`, `val/` names (`val_pixel_ap`) are read under the current ones."""
    series: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for column, value in row.items():
                if column in ("epoch", "step") or value in ("", None):
                    continue
                try:
                    series.setdefault(names.stage_key(column), []).append((float(row["epoch"]), float(value)))
                except (TypeError, ValueError):
                    continue
    return series


def plot_loss_curves(table: ResultTable, runs: list[FinishedRun], path: Path) -> Path | None:
    """Training and validation loss, and the validation metrics, per epoch for every run with a history.csv."""
    histories = [(run, _read_history(run.run_dir / "history.csv")) for run in runs
                 if (run.run_dir / "history.csv").is_file()]
    histories = [(run, h) for run, h in histories if h]
    if not histories:
        return None
    panels = [(column, title) for column, title in HISTORY_PANELS if any(column in h for _, h in histories)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for run, history in histories:
            if key in history:
                epochs, values = zip(*history[key])
                ax.plot(epochs, values, marker=".", label=_run_label(table, run))
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _save(fig, path, axes[0][0])
    return path


def plot_map_grid(table: ResultTable, runs: list[FinishedRun], path: Path, limit: int = MAX_MAP_PANELS) -> Path | None:
    """The runs' anomaly-map panels (maps/*.png), a few from each run, in one image."""
    per_run = [(run, sorted((run.run_dir / "maps").glob("*.png"))) for run in runs]
    per_run = [(run, files) for run, files in per_run if files]
    if not per_run:
        return None
    take = max(1, limit // len(per_run))
    chosen = [(run, f) for run, files in per_run for f in files[:take]][:limit]
    columns = 2 if len(chosen) > 1 else 1
    rows = math.ceil(len(chosen) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(9 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (run, file) in zip(axes.flat, chosen):
        ax.imshow(np.asarray(Image.open(file).convert("RGB")))
        ax.set_title(f"{_run_label(table, run)}\n{file.stem}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _html_table(table: ResultTable) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row, cells in zip(table.rows, table_cells(table)):
        tag = ' class="mean"' if row.category == MEAN_ROW else ""
        text = "".join(f"<td>{html.escape(c.replace('**', ''))}</td>" for c in cells)
        body.append(f"<tr{tag}>{text}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; } tr.mean td { font-weight: bold; background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
.note { color: #666; font-size: 13px; }
"""


def build_local_dashboard(runs_dir: str | Path) -> Path:
    """Write the PNGs and a self-contained index.html to <runs_dir>/dashboard/; returns index.html's path."""
    runs_dir = Path(runs_dir)
    runs = find_runs(runs_dir)
    table = summarise(runs)
    out = runs_dir / "dashboard"
    out.mkdir(exist_ok=True)
    figures: list[tuple[str, Path]] = []
    for key in table.keys:
        if _is_numeric_axis([row.setting[table.keys.index(key)] for row in table.rows]):
            slug = key.rsplit(".", 1)[-1]
            figures.append((f"I / P / O / A vs {key}", plot_metric_vs_key(table, key, out / f"metrics_vs_{slug}.png")))
    figures.append(("Per category", plot_per_category(table, out / "per_category.png")))
    losses = plot_loss_curves(table, runs, out / "loss_curves.png")
    if losses:
        figures.append(("Loss curves and validation metrics", losses))
    maps = plot_map_grid(table, runs, out / "anomaly_maps.png")
    if maps:
        figures.append(("Anomaly maps (test set)", maps))

    sections = "".join(f"<h2>{html.escape(title)}</h2><img src=\"{_inline_png(png)}\" alt=\"{html.escape(title)}\">"
                       for title, png in figures)
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>PRN runs: {html.escape(str(runs_dir))}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>PRN runs in {html.escape(str(runs_dir))}</h1>"
        f"<p class=\"note\">{len(runs)} finished runs · generated {datetime.now():%Y-%m-%d %H:%M} · "
        "I = image AUROC, P = pixel AUROC, O = PRO (FPR ≤ 0.3), A = pixel AP, in %; "
        "mean ± std over seeds</p>"
        f"<h2>Results</h2>{_html_table(table)}{sections}</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    print(f"dashboard: {index}")
    return index


# --------------------------------------------------------------------------------------------------------- W&B report
def _import_reports():
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as err:
        raise ImportError("the W&B dashboard needs the wandb-workspaces package: pip install wandb-workspaces "
                          "(or build the offline dashboard: prn dashboard <runs dir>)") from err
    return wr


def make_wandb_report(entity: str, project: str):
    """A W&B report over every run of ENTITY/PROJECT: metrics vs swept values, per category, losses, anomaly maps."""
    wr = _import_reports()
    metric = {letter: wr.SummaryMetric(names.key(names.TEST, name)) for name, letter, _ in METRICS}
    vs_swept = [
        wr.ScatterPlot(title=f"{letter} vs {key}", x=wr.Config(key), y=summary, running_ymean=True,
                       layout=wr.Layout(x=6 * (i % 4), y=0, w=6, h=6))
        for key in WANDB_SWEPT_KEYS for i, (letter, summary) in enumerate(metric.items())
    ]
    per_category = wr.BarPlot(
        title="I / P / O / A per category (mean ± std over runs)", metrics=list(metric.values()),
        groupby=wr.Config("data.category"), groupby_aggfunc="mean", groupby_rangefunc="stddev", orientation="v",
        layout=wr.Layout(w=24, h=8),
    )
    curves = [
        wr.LinePlot(title="losses", x="epoch", y=list(WANDB_LOSS_KEYS), layout=wr.Layout(w=12, h=7)),
        wr.LinePlot(title="validation metrics", x="epoch", y=list(WANDB_VAL_KEYS), layout=wr.Layout(x=12, w=12, h=7)),
    ]
    maps = wr.MediaBrowser(title="anomaly maps (test set)", media_keys=[WANDB_MAPS_KEY], num_columns=3,
                           layout=wr.Layout(w=24, h=12))

    def grid(panels: list) -> object:
        return wr.PanelGrid(runsets=[wr.Runset(entity=entity, project=project, name="runs")], panels=panels)

    return wr.Report(
        entity=entity,
        project=project,
        title="PRN: ablations and per-category results",
        description="I = image AUROC, P = pixel AUROC, O = PRO (FPR <= 0.3), A = pixel AP, on the test split "
                    "without the seen anomalies; built by `prn dashboard`.",
        width="fluid",
        blocks=[
            wr.H1(text="Metrics against the swept values (paper Tables 6 and 7)"),
            grid(vs_swept),
            wr.H1(text="Per category"),
            grid([per_category]),
            wr.H1(text="Training curves"),
            grid(curves),
            wr.H1(text="Anomaly maps"),
            grid([maps]),
        ],
    )
