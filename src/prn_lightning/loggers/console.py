"""The one-row console summary at the end of a run: I / P / O / A, as in the paper's tables."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"PRN on {summary['dataset']}/{summary['category']} "
                        f"({summary['num_test_images']} test images, {summary['num_seen_anomalies']} seen anomalies)")
    for column in ("I (image AUROC)", "P (pixel AUROC)", "O (PRO@0.3)", "A (pixel AP)"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{100 * summary[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "pro", "pixel_ap")))
    (console or Console()).print(table)
