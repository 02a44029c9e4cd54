"""End to end on the embedded synthetic data: `prn train` writes a complete run directory and an offline W&B run,
`prn test ckpt=...` reproduces the metrics exactly, and a stopped run resumes from last.ckpt."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from prn_lightning.cli import main as prn
from prn_lightning.config import load_config
from prn_lightning.models.prn.lightning_module import PRNModule, f1_optimal_threshold
from prn_lightning.workflows.train import run_test, run_train

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "pro")


def tiny_overrides(tmp_path: Path, **extra: str) -> list[str]:
    """A run small enough for CI: 64 px, a few steps, the real bundled backbone and FAISS prototypes."""
    values = {
        "data.root": str(tmp_path / "synthetic"),
        "data.image_size": "64",
        "data.num_seen_anomalies": "4",
        "data.batch_size": "4",
        "data.eval_batch_size": "8",
        "data.num_workers": "0",
        "trainer.max_epochs": "2",
        "trainer.limit_train_batches": "3",
        "trainer.enable_progress_bar": "false",
        "model.msa_blocks": "1",
        "logger.num_map_panels": "3",
        "runs_root": str(tmp_path / "runs"),
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("train")
    import os

    os.environ["WANDB_MODE"] = "offline"
    return run_train(load_config(tiny_overrides(tmp_path)))


def test_run_directory_is_complete(finished_run: Path):
    for name in ("config.yaml", "seen_anomalies.txt", "metrics.json", "per_defect.csv", "history.csv", "curves.png"):
        assert (finished_run / name).is_file(), name
    assert (finished_run / "checkpoints" / "last.ckpt").is_file()
    assert (finished_run / "checkpoints" / "best.ckpt").is_file()
    assert {p.name for p in finished_run.iterdir()} == {  # what a run has always left, nothing more
        "config.yaml", "seen_anomalies.txt", "checkpoints", "history.csv", "metrics.json", "per_defect.csv",
        "curves.png", "maps", "wandb"}
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert set(metrics) == {*METRIC_KEYS, "num_test_images", "num_seen_anomalies", "num_val_anomalies", "dataset",
                            "category", "seed",
                            "image_threshold", "checkpoint", "epochs", "wall_time_s", "prototypes_per_stage"}
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_seen_anomalies"] == 4
    seen = (finished_run / "seen_anomalies.txt").read_text().splitlines()
    assert len([line for line in seen if line.strip() and not line.startswith("#")]) == 4
    assert len(list((finished_run / "maps").glob("*.png"))) == 3
    with (finished_run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(r["train/loss"] and r["val/loss"] and r["val/pixel_ap"] and r["train/lr"] for r in rows)
    assert all(float(r["epoch_time_s"]) > 0 for r in rows)
    with (finished_run / "per_defect.csv").open() as handle:
        per_defect = list(csv.DictReader(handle))
    assert per_defect and all(r["defect_type"] != "good" for r in per_defect)


def test_offline_wandb_run_holds_metrics_tables_and_images(finished_run: Path):
    runs = list((finished_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((finished_run / "wandb").iterdir())
    run = runs[0]
    summary_files = list(run.rglob("wandb-summary.json"))
    data = b"".join(p.read_bytes() for p in run.rglob("*.wandb"))
    assert b"test/image_auroc" in data and b"test/pro" in data and b"val/pixel_ap" in data
    assert b"train/loss" in data  # per epoch; train/lr is logged per step (every trainer.log_every_n_steps)
    media = [p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()]
    assert any("media/images/test/anomaly_maps" in m for m in media), media
    assert any("media/table/test/per_defect" in m for m in media), media
    assert any("media/table/seen_anomalies" in m for m in media), media
    assert any("test/roc_curve" in m or "roc_curve_table" in m for m in media), media
    assert summary_files or b"prototypes_per_stage" in data


def test_checkpoint_reproduces_metrics_exactly(finished_run: Path, tmp_path):
    ckpt = finished_run / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt={ckpt}", f"run_dir={tmp_path / 'retest'}", "logger=none"]
    result = run_test(load_config(overrides), overrides)
    original = json.loads((finished_run / "metrics.json").read_text())
    for key in METRIC_KEYS + ("num_test_images", "num_seen_anomalies"):
        assert result[key] == original[key], key
    # the checkpoint holds the prototypes: loading does not re-cluster
    module = PRNModule.from_checkpoint(ckpt)
    assert module.network.prototypes.fitted


def test_checkpoint_chosen_on_real_validation_anomalies(tmp_path):
    """data.num_val_anomalies: real defects in validation pick the checkpoint; `prn test` keeps them out of the test."""
    run = run_train(load_config(tiny_overrides(tmp_path, **{
        "logger": "none", "data.num_val_anomalies": "4", "model.monitor": "val/real_image_auroc"})))
    recorded = [line for line in (run / "val_anomalies.txt").read_text().splitlines() if not line.startswith("#")]
    seen = [line for line in (run / "seen_anomalies.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(recorded) == 4 and not set(recorded) & set(seen)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert all(0.0 <= float(r["val/real_image_auroc"]) <= 1.0 and r["val/real_pro"] for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_val_anomalies"] == 4 and metrics["num_seen_anomalies"] == 4
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    monitor = next(v for k, v in best["callbacks"].items() if "val/real_image_auroc" in k)
    assert float(monitor["best_model_score"]) == max(float(r["val/real_image_auroc"]) for r in rows)
    overrides = [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"run_dir={tmp_path / 'retest'}", "logger=none"]
    result = run_test(load_config(overrides), overrides)
    for key in METRIC_KEYS + ("num_test_images", "num_val_anomalies"):
        assert result[key] == metrics[key], key


def test_history_leaves_validation_cells_empty_on_epochs_without_validation(tmp_path, capsys):
    """trainer.check_val_every_n_epoch=2: only epoch 1 has a validation pass, so epoch 2 has no val/ values (the
    trainer still holds epoch 1's), neither in history.csv nor on the console line."""
    run = run_train(load_config(tiny_overrides(tmp_path, **{
        "logger": "none", "trainer.max_epochs": "3", "trainer.check_val_every_n_epoch": "2"})))
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    val_columns = [k for k in rows[1] if k.startswith("val/")]
    assert "val/pixel_ap" in val_columns and "val/loss" in val_columns
    assert all(rows[1][k] for k in val_columns)
    for row in (rows[0], rows[2]):
        assert all(row[k] == "" for k in val_columns) and row["train/loss"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert ["val/pixel_ap=" in line for line in lines] == [False, True, False]


def test_resume_continues_from_last_checkpoint(tmp_path):
    first = run_train(load_config(tiny_overrides(tmp_path, **{"trainer.max_epochs": "1", "logger": "none"})))
    last = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    resumed = run_train(load_config(tiny_overrides(
        tmp_path, **{"trainer.max_epochs": "2", "logger": "none", "resume": "true", "run_dir": str(first)})))
    assert resumed == first
    last = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 6  # continued: 3 steps of epoch 0 from the checkpoint, 3 new ones
    rows = list(csv.DictReader((first / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]


def test_bfloat16_mixed_precision_trains_on_cpu(finished_run: Path, tmp_path):
    """`trainer.precision=bf16-mixed` (README Speed): CPU autocast computes in bfloat16, the weights stay float32."""
    run = run_train(load_config(tiny_overrides(
        tmp_path, **{"trainer.max_epochs": "1", "logger": "none", "trainer.precision": "bf16-mixed"})))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}

    def first_epoch_loss(run_dir: Path) -> float:
        with (run_dir / "history.csv").open() as handle:
            return float(next(csv.DictReader(handle))["train/loss"])

    # the same seed and steps in float32 (the fixture) give another loss: the arithmetic did run in bfloat16
    bf16_loss, float32_loss = first_epoch_loss(run), first_epoch_loss(finished_run)
    assert bf16_loss != float32_loss
    assert abs(bf16_loss - float32_loss) < 0.2 * float32_loss


def test_gradient_clipping_bounds_every_step(tmp_path, monkeypatch):
    """`trainer.gradient_clip_val` (README "Gradient clipping") reaches Lightning: every step's gradient is larger than
    the value before clipping and no larger after it."""
    import lightning.pytorch as pl

    import prn_lightning.workflows.train as train_workflow

    clip, before, after = 1e-3, [], []

    def total_norm(module: torch.nn.Module) -> float:
        return float(sum(p.grad.detach().pow(2).sum() for p in module.parameters() if p.grad is not None)) ** 0.5

    class Norms(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # Lightning clips after this hook
            before.append(total_norm(pl_module))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the gradients just stepped with
            after.append(total_norm(pl_module))

    build = train_workflow.build_trainer
    monkeypatch.setattr(train_workflow, "build_trainer",
                        lambda cfg, run_dir, logger, callbacks: build(cfg, run_dir, logger, [*callbacks, Norms()]))
    run_train(load_config(tiny_overrides(tmp_path, **{
        "trainer.max_epochs": "1", "logger": "none", "trainer.gradient_clip_val": str(clip)})))
    assert len(before) == len(after) == 3
    assert min(before) > clip
    assert max(after) <= clip * (1 + 1e-4)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = prn(["train", *tiny_overrides(tmp_path, resume="true", run_dir=str(tmp_path / "nothing"))])
    assert code == 2
    assert "last.ckpt" in capsys.readouterr().err


def test_cli_reports_unknown_key(capsys):
    assert prn(["train", "model.prototype_ration=0.3"]) == 2
    err = capsys.readouterr().err
    assert "model.prototype_ration" in err and "model.prototype_ratio" in err


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_threshold_matches_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.round(torch.rand(50, generator=generator) * 10) / 10  # ties
    labels = (torch.rand(50, generator=generator) > 0.6).long()

    def f1(threshold: float) -> float:
        pred = scores >= threshold
        tp = float((pred & (labels == 1)).sum())
        return 2 * tp / (float(pred.sum()) + float(labels.sum()))

    best = max(f1(float(t)) for t in scores.unique())
    assert f1(f1_optimal_threshold(scores, labels)) == pytest.approx(best)
