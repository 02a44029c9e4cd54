"""Shared test fixtures: offline environment, the real data in ../shared/data (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach the network: timm and albumentations stay offline, W&B writes offline runs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def shared_data_root() -> Path:
    return Path(os.environ.get("PRN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real inspection images in MVTec layout); the test is skipped when it is absent."""
    root = shared_data_root()
    if not (root / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {root} (set PRN_SHARED_DATA)")
    return root


@pytest.fixture(autouse=True)
def _isolated_wandb(tmp_path, monkeypatch):
    """Keep W&B's caches inside the test's temporary folder."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
