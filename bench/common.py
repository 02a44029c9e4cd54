"""Shared by the benchmark scripts: where results go, how the machine is described, timing, summary rows, and
loading a finished run for the analysis scripts.

Every script writes bench/results/<name>.json; a script that adds lines to bench/results/summary.md puts them in
its payload's "rows" (see `row`), and run_all.py collects them.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SHARED = Path(os.environ.get("PRN_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    """One line: CPU model, cores, torch threads, load average now (other jobs inflate every figure)."""
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{model}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, load average {os.getloadavg()[0]:.1f}")


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn` over `repeats` calls after `warmup` calls, and every timed call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def row(what: str, ours: float, unit: str, *, peer: float | None = None, peer_name: str = "",
        higher_is_better: bool = False, target: str = "", met: bool | None = None, note: str = "") -> dict:
    """One line of the summary: our figure, the peer's (or the baseline's) and their ratio in our favour
    (> 1: ours is better), the target and whether it is met."""
    ratio = None
    if peer is not None and ours > 0 and peer > 0:
        ratio = ours / peer if higher_is_better else peer / ours
    return {"what": what, "ours": ours, "unit": unit, "peer": peer, "peer_name": peer_name, "ratio": ratio,
            "target": target, "met": met, "note": note}


def write_result(name: str, payload: dict) -> Path:
    """bench/results/<name>.json with the machine line added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1, default=float) + "\n")
    print(f"wrote {path}")
    return path


def finished_run(run: Path, stage: str) -> tuple[DictConfig, Any, Any]:
    """(config, datamodule set up for `stage`, best checkpoint in eval mode) of a finished run: its own seen
    anomalies stay out of its test split, as in the run's test pass."""
    from prn_lightning.data.datamodule import PRNDataModule
    from prn_lightning.data.seen import SEEN_LIST
    from prn_lightning.models.prn.lightning_module import PRNModule

    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = PRNDataModule(cfg.data, seed=int(cfg.seed), seen_list=run / SEEN_LIST)
    datamodule.setup(stage)
    return cfg, datamodule, PRNModule.from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
