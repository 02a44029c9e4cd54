"""A run is never overwritten and resumes exactly: run directories are never shared, `resume=RUN` continues the run
with its own config and seen anomalies, a run stopped by SIGTERM and killed by SIGKILL mid-epoch ends with the same
metrics.json as the uninterrupted run, `prn test` cannot put seen anomalies back into the test set, and failures
leave nothing half-made behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prn_lightning.cli import main as prn
from prn_lightning.config import load_config
from prn_lightning.data.seen import read_seen_list
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.errors import ConfigError
from prn_lightning.workflows.resume import AtomicCheckpointIO
from prn_lightning.workflows.run_dir import (
    RESUME_SAFE_KEYS,
    differing_keys,
    new_run_dir,
    open_run,
    record_resume,
    resume_config,
    save_config,
    stored_config,
)

STEPS_PER_EPOCH = 6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, image_size=64, num_train=8, num_test_good=3, num_per_defect=2,
                       categories=("texture", "object"))
    return root


def overrides(data_root: Path, **extra: str) -> list[str]:
    """A tiny run: 64 px, 6 steps of 2 samples per epoch, 3 epochs, random backbone, no W&B."""
    values = {"data": "folder", "data.root": str(data_root), "data.category": "texture", "data.image_size": "64",
              "data.num_seen_anomalies": "3", "data.batch_size": "2", "data.eval_batch_size": "8",
              "data.samples_per_epoch": str(2 * STEPS_PER_EPOCH), "data.num_workers": "1",
              "trainer.max_epochs": "3", "trainer.enable_progress_bar": "false", "logger": "none",
              "logger.num_map_panels": "1", "model.backbone.weights": "none", "model.msa_blocks": "1",
              "model.monitor": "val_image_auroc", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "prn_lightning.cli", "train", *args]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def without_times(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if "time" not in k}


def wait_for(predicate, process: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit code {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def history_rows(run_dir: Path) -> int:
    path = run_dir / "history.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory) -> Path:
    """The uninterrupted run (a subprocess, like the interrupted one)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(train_command(*overrides(data_root), f"run_dir={run_dir}"), env=ENV, check=True,
                   capture_output=True)
    return run_dir


def test_sigterm_then_sigkill_mid_epoch_resume_to_the_same_metrics(data_root: Path, reference: Path, tmp_path):
    run_dir = tmp_path / "run"
    # SIGTERM as soon as epoch 0 is recorded: the run saves last.ckpt after its next step (mid-epoch 1), exits 143
    first = subprocess.Popen(train_command(*overrides(data_root), f"run_dir={run_dir}"), env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: history_rows(run_dir) >= 1, first, "epoch 0 ended")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err[-2000:]
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert STEPS_PER_EPOCH < stopped["global_step"] < 2 * STEPS_PER_EPOCH  # saved in the middle of epoch 1

    # resume (the run's own config: only the run directory on the command line), SIGKILL in the middle of epoch 2
    second = subprocess.Popen(train_command(f"resume={run_dir}"), env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for(lambda: history_rows(run_dir) >= 2, second, "epoch 1 ended")
    time.sleep(0.3)
    second.kill()
    second.wait()
    assert not (run_dir / "metrics.json").exists()

    subprocess.run(train_command(f"resume={run_dir}"), env=ENV, check=True, capture_output=True)
    assert without_times(run_dir / "metrics.json") == without_times(reference / "metrics.json")
    # the same weights at the end, bit for bit (metrics.json alone may come from an early best checkpoint)
    resumed, uninterrupted = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
                              for d in (run_dir, reference))
    assert resumed["global_step"] == uninterrupted["global_step"] == 3 * STEPS_PER_EPOCH
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    assert all(torch.equal(resumed["state_dict"][k], uninterrupted["state_dict"][k]) for k in resumed["state_dict"])
    assert (run_dir / "config.yaml").read_text() == (reference / "config.yaml").read_text().replace(
        str(reference), str(run_dir))
    assert read_seen_list(run_dir / "seen_anomalies.txt") == read_seen_list(reference / "seen_anomalies.txt")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_resume_refuses_values_that_change_the_result(data_root: Path, reference: Path, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    code = prn(["train", f"resume={reference}", "data.category=object", "model.prototype_ratio=0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "data.category (texture -> object)" in err and "model.prototype_ratio (0.1 -> 0.5)" in err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()} == before  # nothing rewritten


def test_an_existing_run_is_only_reused_by_resume(data_root: Path, reference: Path, capsys):
    code = prn(["train", *overrides(data_root), f"run_dir={reference}"])
    err = capsys.readouterr().err
    assert code == 2 and f"run_dir={reference} already holds a run" in err and "resume=" in err


def test_run_directories_are_never_shared(tmp_path: Path):
    made = [new_run_dir(tmp_path, "folder", "texture") for _ in range(50)]  # well within one second
    assert len(set(made)) == 50 and all(p.is_dir() and not any(p.iterdir()) for p in made)
    assert len({p.name[:15] for p in made}) <= 2  # same timestamp, told apart by the suffix


def test_prn_test_keeps_the_runs_seen_anomalies_out(data_root: Path, reference: Path, tmp_path, capsys):
    ckpt = reference / "checkpoints" / "best.ckpt"
    original = json.loads((reference / "metrics.json").read_text())
    for changed in ("seed=0", "data.num_seen_anomalies=1", "data.category=object", "data.image_size=96"):
        out = tmp_path / changed.split("=")[0]
        code = prn(["test", f"ckpt={ckpt}", changed, f"run_dir={out}"])
        err = capsys.readouterr().err
        assert code == 2 and changed.split("=")[0] in err and err.count("\n") == 1, err
        assert ("evaluate_on_other_data=true" in err) != changed.startswith("data.image_size"), err
        assert not out.exists()  # a failed prn test leaves no folder behind
    code = prn(["test", f"ckpt={ckpt}", "data.image_size=96", "evaluate_on_other_data=true"])
    assert code == 2 and "network takes exactly that input" in capsys.readouterr().err
    assert not list(reference.glob("test-*"))
    # on request, another seed is evaluated, but the run's seen files stay out of the test set
    result_dir = tmp_path / "other-seed"
    assert prn(["test", f"ckpt={ckpt}", "seed=0", "evaluate_on_other_data=true", f"run_dir={result_dir}"]) == 0
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["num_test_images"] == original["num_test_images"]
    seen = {str(s.image_path) for s in read_seen_list(reference / "seen_anomalies.txt")}
    assert seen == {str(s.image_path) for s in read_seen_list(result_dir / "seen_anomalies.txt")}
    # another category, on request: scored with its own defect types
    other = tmp_path / "other-category"
    assert prn(["test", f"ckpt={ckpt}", "data.category=object", "evaluate_on_other_data=true",
                f"run_dir={other}"]) == 0
    assert json.loads((other / "metrics.json").read_text())["category"] == "object"


def test_truncated_checkpoint_is_one_line(reference: Path, tmp_path: Path, capsys):
    broken = tmp_path / "broken.ckpt"
    data = (reference / "checkpoints" / "best.ckpt").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    for command in (["test", f"ckpt={broken}"], ["predict", f"ckpt={broken}", f"input={reference / 'maps'}",
                                                  f"out={tmp_path / 'pred'}"]):
        assert prn(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(broken) in err and "truncated" in err, err
    assert not list(tmp_path.glob("test-*")) and not (tmp_path / "pred").exists()


def test_a_failed_run_removes_what_it_created(data_root: Path, tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    code = prn(["train", *overrides(data_root, **{"data.category": "no_such_category"}), f"runs_root={runs}"])
    assert code == 2 and "no_such_category" in capsys.readouterr().err
    assert not list(runs.rglob("*")) or all(p.is_dir() for p in runs.rglob("*"))  # no file left behind
    assert not [p for p in runs.rglob("*") if p.is_dir() and p.parent.name == "no_such_category"]


def test_atomic_writes_leave_the_previous_file_when_a_write_fails(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, target)
    with pytest.raises(TypeError, match="pickle"):  # a lock cannot be pickled: the write fails half-way
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "bad": threading.Lock()}, target)
    assert torch.load(target, weights_only=False) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    config = tmp_path / "config.yaml"
    save_config(load_config(["seed=3"]), config)
    with pytest.raises(FileExistsError):
        save_config(load_config(["seed=4"]), config, exclusive=True)
    assert OmegaConf.load(config).seed == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml",
                                                                                              "last.ckpt"]


def test_resume_removes_partial_files_of_a_killed_writer(reference: Path, tmp_path: Path):
    """SIGKILL during an atomic write leaves `.last.ckpt.PID.tmp` (the cleanup never runs); the resume removes it,
    keeping a partial whose writer is still alive."""
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("metrics.json"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphans = [run / "checkpoints" / f".last.ckpt.{dead.pid}.tmp", run / f".config.yaml.{dead.pid}.tmp"]
        kept = run / "checkpoints" / f".best.ckpt.{alive.pid}.tmp"
        for partial in (*orphans, kept):
            partial.write_bytes(b"half a file")
        opened = open_run(resume_config(run, []), rank=0)
        assert opened.resume_from is not None and opened.resume_from.parent == run / "checkpoints"
        assert not any(p.exists() for p in orphans) and kept.exists()
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        [kept.name, "best.ckpt", "last.ckpt"])


def test_prn_predict_takes_the_data_values_from_the_run(reference: Path, tmp_path: Path, capsys):
    ckpt = reference / "checkpoints" / "best.ckpt"
    code = prn(["predict", f"ckpt={ckpt}", f"input={reference / 'maps'}", f"out={tmp_path / 'out'}",
                "data.image_size=128"])
    err = capsys.readouterr().err
    assert code == 2 and "data.image_size=128" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_resume_config_extends_a_run_and_remembers_it(data_root: Path, reference: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "config.yaml", run / "config.yaml")
    cfg = resume_config(run, ["trainer.max_epochs=5", "logger=none", "data.num_workers=0"])
    assert cfg.trainer.max_epochs == 5 and cfg.run_dir == str(run) and cfg.resume is True
    assert differing_keys(stored_config(run), cfg, RESUME_SAFE_KEYS) == []
    record_resume(run, cfg)
    assert resume_config(run, []).trainer.max_epochs == 5  # the next resume keeps the extension
    assert (run / "config.yaml").read_text() == (reference / "config.yaml").read_text()  # never rewritten
    # a whole command line (what a sweep replays) is accepted when it describes the same run
    assert resume_config(run, overrides(data_root)).data.category == "texture"
    with pytest.raises(ConfigError, match=r"data.image_size \(64 -> 96\)"):
        resume_config(run, overrides(data_root, **{"data.image_size": "96"}))
