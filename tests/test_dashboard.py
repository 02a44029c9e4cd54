"""`prn dashboard`: the offline PNG + self-contained HTML dashboard, target checks, and the W&B report layout."""
from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from prn_lightning.config import load_config
from prn_lightning.workflows.dashboard import DashboardTargetError, build_dashboard

METRIC_NAMES = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")


def make_run(run_dir: Path, overrides: list[str], level: float) -> None:
    """A finished run as the train workflow leaves it: config.yaml, metrics.json, history.csv and maps/*.png."""
    cfg = load_config(overrides)
    (run_dir / "maps").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    metrics = {name: level for name in METRIC_NAMES}
    (run_dir / "metrics.json").write_text(json.dumps(
        {**metrics, "dataset": "synthetic", "category": str(cfg.data.category), "seed": int(cfg.seed)}))
    columns = ["train/loss", "val/loss", "val/pixel_ap", "val/image_auroc"]
    if int(cfg.seed) == 1:  # a run directory from before the train/ val/ names
        columns = [c.replace("/", "_") for c in columns]
    with (run_dir / "history.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", *columns])
        for epoch in range(3):
            writer.writerow([epoch, 5 * (epoch + 1), 1 / (epoch + 1), 1.2 / (epoch + 1), "", level * epoch / 2])
    rng = np.random.default_rng(int(cfg.seed))
    Image.fromarray(rng.integers(0, 255, (60, 160, 3), dtype=np.uint8)).save(run_dir / "maps" / "00_detection_a.png")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    sweep_dir = tmp_path / "sweeps" / "seen_anomalies"
    for category in ("texture", "object"):
        for count in (1, 5):
            for seed in (0, 1):
                make_run(sweep_dir / category / f"num_seen_anomalies-{count}" / f"seed{seed}",
                         [f"data.category={category}", f"data.num_seen_anomalies={count}", f"seed={seed}"],
                         0.5 + count / 20 + seed / 100)
    (sweep_dir / "sweep.json").write_text(json.dumps({"parameters": {"data.num_seen_anomalies": [1, 5, 10]}}))
    return sweep_dir


class _Links(HTMLParser):
    """Every URL-bearing attribute (src, href, ...) and every tag of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "srcset", "data", "poster")]


def test_offline_dashboard_is_one_self_contained_page_with_its_pngs(runs_dir: Path) -> None:
    index = Path(build_dashboard(runs_dir))
    out = runs_dir / "dashboard"
    assert index == out / "index.html"
    pngs = {"metrics_vs_num_seen_anomalies.png", "per_category.png", "loss_curves.png", "anomaly_maps.png"}
    assert pngs <= {p.name for p in out.glob("*.png")}
    for name in pngs:
        with Image.open(out / name) as image:
            assert image.width > 300 and image.height > 200

    page = index.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert len(parser.urls) == len(pngs)  # one inlined image per figure, nothing else referenced
    assert all(url.startswith("data:image/png;base64,") for url in parser.urls)
    assert "link" not in parser.tags and "script" not in parser.tags and "url(" not in page
    # the results table: 2 settings x (2 categories + mean), header and the 1-seen-anomaly texture cell (55.5 ± 0.7)
    assert parser.tags.count("tr") == 1 + 6
    assert "<th>num_seen_anomalies</th>" in page and "<td>55.5 ± 0.7</td>" in page


def test_dashboard_target_errors_say_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DashboardTargetError, match="not a directory"):
        build_dashboard(str(tmp_path / "no" / "such" / "runs"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    empty_netrc = tmp_path / "netrc"
    empty_netrc.write_text("")
    monkeypatch.setenv("NETRC", str(empty_netrc))
    with pytest.raises(DashboardTargetError, match="wandb login"):
        build_dashboard("my-team/prn-lightning")


def test_wandb_report_has_the_swept_value_category_loss_and_map_panels() -> None:
    pytest.importorskip("wandb_workspaces")
    import wandb_workspaces.reports.v2 as wr

    from prn_lightning.workflows.dashboard import make_wandb_report

    report = make_wandb_report("my-team", "prn-lightning")
    panels = [panel for block in report.blocks for panel in getattr(block, "panels", [])]
    scatter_axes = {(p.x.name, p.y.name) for p in panels if isinstance(p, wr.ScatterPlot)}
    for key in ("model.prototype_ratio", "data.num_seen_anomalies"):
        for metric in METRIC_NAMES:
            assert (key, f"test/{metric}") in scatter_axes
    bars = [p for p in panels if isinstance(p, wr.BarPlot)]
    assert bars and bars[0].groupby == wr.Config("data.category")
    assert any(isinstance(p, wr.LinePlot) and "val/loss" in p.y for p in panels)
    assert any(isinstance(p, wr.MediaBrowser) and p.media_keys == ["test/anomaly_maps"] for p in panels)
    runsets = {(rs.entity, rs.project) for block in report.blocks for rs in getattr(block, "runsets", [])}
    assert runsets == {("my-team", "prn-lightning")}


def test_loss_curves_read_old_and_new_history_columns(runs_dir: Path) -> None:
    from prn_lightning.workflows.dashboard import _read_history

    for seed in (0, 1):  # seed 1 wrote `val_pixel_ap`, seed 0 `val/pixel_ap`
        history = _read_history(runs_dir / "texture" / "num_seen_anomalies-1" / f"seed{seed}" / "history.csv")
        assert set(history) == {"train/loss", "val/loss", "val/image_auroc"}  # val/pixel_ap: empty cells
        assert [epoch for epoch, _ in history["train/loss"]] == [0.0, 1.0, 2.0]
