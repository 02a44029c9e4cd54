"""What `make train` / `make sweep` run: experiment choice per DATASET/CATEGORY and download on first use."""
from __future__ import annotations

import socket

from prn_lightning.cli import main
from prn_lightning.config import load_config
from prn_lightning.workflows.make_train import experiment_overrides


def test_experiment_choice():
    assert experiment_overrides("", "", []) == ["experiment=synthetic_cpu"]
    assert experiment_overrides("", "carpet", ["seed=1"]) == [
        "experiment=mvtec_cpu", "data.category='carpet'", "seed=1"]
    cfg = load_config(experiment_overrides("btad", "02", []))
    assert cfg.data.dataset == "btad" and str(cfg.data.category) == "02"
    cfg = load_config(experiment_overrides("folder", "", ["data.root=/x", "data.category=y"]))
    assert cfg.data.dataset == "folder" and cfg.data.root == "/x"


def test_missing_public_dataset_is_downloaded_and_a_failure_stops_with_the_url(tmp_path, capsys):
    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mvtec_anomaly_detection.tar.xz"
    code = main(["make-train", "", "carpet", f"data.root={tmp_path / 'mvtec'}", f"data.url={url}"])
    assert code == 2
    captured = capsys.readouterr()
    assert "downloading" in captured.out
    assert url in captured.err and "by hand" in captured.err
    assert not (tmp_path / "runs").exists()
