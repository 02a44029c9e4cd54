"""The package as a user installs it from a wheel (not the editable checkout): where it finds experiments/.

The configs are not package data: an installed `prn` reads `experiments/` from the working directory (a clone) or
from PRN_EXPERIMENTS_DIR, and says so in one line when neither has it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE = ("import prn_lightning, prn_lightning.config as c; "
           "print(prn_lightning.__file__); print(c.load_config(['model.topk=3']).model.topk)")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel built from a copy of the sources (the shared checkout stays untouched), installed into a folder
    that comes first on PYTHONPATH; the dependencies are this environment's."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = _run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
                  str(source)], root, dict(os.environ))
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((root / "dist").glob("prn_lightning-*.whl"))
    site = root / "site"
    done = _run(["-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], root, dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("PRN_EXPERIMENTS_DIR", None)
    return site, env


def test_installed_package_reads_experiments_from_the_working_directory(installed):
    site, env = installed
    result = _run(["-c", COMPOSE], REPO, env)
    assert result.returncode == 0, result.stderr[-2000:]
    location, topk = result.stdout.split()
    assert Path(location).is_relative_to(site)  # the wheel's copy, not the checkout
    assert topk == "3"


def test_installed_package_reads_prn_experiments_dir(installed, tmp_path):
    site, env = installed
    result = _run(["-c", COMPOSE], tmp_path, {**env, "PRN_EXPERIMENTS_DIR": str(REPO / "experiments")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[1] == "3"


def test_installed_package_without_experiments_says_where_it_looked(installed, tmp_path):
    site, env = installed
    result = _run(["-m", "prn_lightning.cli", "train", "logger=none"], tmp_path, env)
    assert result.returncode == 2
    assert "experiments/" in result.stderr and "PRN_EXPERIMENTS_DIR" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
