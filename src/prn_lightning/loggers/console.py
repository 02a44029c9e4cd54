"""The one-row console summary at the end of a run: I / P / O / A, as in the paper's tables."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from prn_lightning.metrics.names import METRICS


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"PRN on {summary['dataset']}/{summary['category']} "
                        f"({summary['num_test_images']} test images, {summary['num_seen_anomalies']} seen anomalies)")
    for metric in METRICS:
        table.add_column(f"{metric.letter} ({metric.title})", justify="right")
    table.add_row(*(f"{100 * summary[metric.name]:.1f}" for metric in METRICS))
    (console or Console()).print(table)
