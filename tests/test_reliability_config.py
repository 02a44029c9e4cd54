"""Config values are type- and range-checked before any work: one line per problem naming the key, the value and
what is allowed, no traceback (unless --debug or PRN_DEBUG); timm's download fails fast when the hub is unreachable."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from prn_lightning.cli import main as prn
from prn_lightning.config import load_config
from prn_lightning.config_checks import check_config, config_problems, runs_root_problem
from prn_lightning.errors import ConfigError, PRNUserError

BAD_VALUES = [
    ("model.prototype_ratio", "abc", "(0.0, 1.0]"),
    ("model.prototype_ratio", "0", "(0.0, 1.0]"),
    ("model.prototype_ratio", "1.5", "(0.0, 1.0]"),
    ("data.image_size", "abc", "multiple of 32"),
    ("data.image_size", "100", "multiple of 32"),
    ("data.image_size", "[64,100]", "multiple of 32"),
    ("data.batch_size", "0", ">= 1"),
    ("data.beta", "[0.9,0.1]", "low <= high"),
    ("data.foreground", "maybe", "auto, texture, object"),
    ("data.perlin.threshold", "1.0", "(-1.0, 1.0)"),
    ("data.perlin.min_threshold", "-1", "null or a number in (-1.0, 1.0)"),
    ("trainer.max_epochs", "two", "integer >= 1"),
    ("seed", "-3", ">= 0"),
    ("logger.mode", "sometimes", "auto, online, offline"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_VALUES)
def test_bad_value_is_one_line_naming_key_value_and_range(key, value, allowed, capsys, tmp_path):
    tiny = {"data.root": str(tmp_path / "data"), "data.image_size": "64", "trainer.max_epochs": "1",
            "trainer.limit_train_batches": "1", "logger": "none", "model.backbone.weights": "none",
            "runs_root": str(tmp_path / "runs")}  # in case a value slipped through: a tiny run, not the default
    code = prn(["train", *[f"{k}={v}" for k, v in {**tiny, key: value}.items()]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    shown = value.replace(",", ", ")
    assert lines[0].startswith(f"error: {key}={shown} ") and allowed in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # nothing was started


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(["model.prototype_ratio=abc", "data.image_size=100", "data.num_workers=-1"])
    lines = str(err.value).splitlines()
    assert [line.split("=")[0] for line in lines] == ["data.image_size", "data.num_workers", "model.prototype_ratio"]


def test_both_image_size_forms_and_every_shipped_config_pass():
    assert load_config(["data.image_size=[64,128]"]).data.image_size == [64, 128]
    assert load_config(["data.image_size=96"]).data.image_size == 96
    experiments = Path(__file__).resolve().parents[1] / "experiments" / "experiment"
    for name in sorted(p.stem for p in experiments.glob("*.yaml")):
        assert config_problems(load_config([f"experiment={name}"])) == [], name


def test_cross_key_rules():
    with pytest.raises(ConfigError, match=r"data.perlin.min_scale=4, data.perlin.max_scale=2"):
        load_config(["data.perlin.min_scale=4", "data.perlin.max_scale=2"])
    with pytest.raises(ConfigError, match=r"data.perlin.min_threshold=0.7 .* data.perlin.threshold=0.5"):
        load_config(["data.perlin.min_threshold=0.7"])
    with pytest.raises(ConfigError, match="data.generation enables no anomaly strategy"):
        load_config(["data.num_seen_anomalies=0", "data.generation.simulated=false"])
    with pytest.raises(ConfigError, match="data.samples_per_epoch=null"):
        load_config(["data.anomaly_ratio=1.0"])
    with pytest.raises(ConfigError, match="model.topk=5000 .* 4096 pixels"):
        load_config(["model.topk=5000", "data.image_size=64"])
    with pytest.raises(ConfigError, match="model.monitor=val/real_image_auroc .* data.num_val_anomalies=0"):
        load_config(["model.monitor=val/real_image_auroc"])
    with pytest.raises(ConfigError, match="data.num_val_anomalies=-1"):
        load_config(["data.num_val_anomalies=-1"])
    assert load_config(["model.monitor=val/real_pro", "data.num_val_anomalies=3"]).data.num_val_anomalies == 3
    located = load_config(["model.prototype_leave_one_out=true", "model.prototype_match=location"]).model
    assert located.prototype_leave_one_out is True and located.prototype_match == "location"
    with pytest.raises(ConfigError, match="model.prototype_leave_one_out=sometimes"):
        load_config(["model.prototype_leave_one_out=sometimes"])


def test_runs_root_must_be_a_writable_directory(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in runs_root_problem(afile)
    assert f"below {afile}, which is not a directory" in runs_root_problem(afile / "runs")
    assert runs_root_problem(tmp_path / "new" / "runs") is None and not (tmp_path / "new").exists()
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    problems = [p for p in (runs_root_problem(locked), runs_root_problem(Path("/sys/prn-runs"))) if p]
    if not problems:  # root ignores mode bits; /sys refuses even root where it is mounted
        pytest.skip("no unwritable folder available to this user")
    assert "cannot write into it" in problems[0]
    cfg = load_config([f"runs_root={afile}"])
    with pytest.raises(ConfigError, match=f"runs_root={afile} is not allowed"):
        check_config(cfg, writable_runs_root=True)


def test_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
    with pytest.raises(ConfigError):
        prn(["train", "--debug", "model.prototype_ratio=abc"])
    with pytest.raises(ConfigError):
        prn(["--debug", "train", "model.prototype_ratio=abc"])
    monkeypatch.setenv("PRN_DEBUG", "1")
    with pytest.raises(ConfigError):
        prn(["train", "model.prototype_ratio=abc"])
    monkeypatch.setenv("PRN_DEBUG", "0")
    assert prn(["train", "model.prototype_ratio=abc"]) == 2
    assert issubclass(ConfigError, PRNUserError)


def test_timm_download_fails_fast_without_retries(monkeypatch, tmp_path, caplog):
    """An unreachable hub: one connection attempt, then the message naming the offline option (the hub client's
    own download retries five times with back-off first, about a minute, logging each retry)."""
    import huggingface_hub.constants as hf_constants

    from prn_lightning.models.prn.backbone import BackboneError, FrozenBackbone

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there: connections are refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with caplog.at_level(logging.WARNING), pytest.raises(BackboneError) as info:
        FrozenBackbone("resnet18", "timm", (1, 2, 3, 4))
    assert f"127.0.0.1:{port} cannot be reached" in str(info.value)
    assert "model.backbone.weights=bundled" in str(info.value)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_prn_train_with_an_unusable_runs_root_is_one_line(tmp_path: Path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for runs_root in (afile, afile / "runs"):
        code = prn(["train", f"runs_root={runs_root}", f"data.root={tmp_path / 'data'}", "logger=none"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"runs_root={runs_root} is not allowed" in err, err
    assert not (tmp_path / "data").exists()  # refused before the dataset was touched
