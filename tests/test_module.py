"""PRNModule from explicit arguments (no run config), its learning-rate schedules, checkpoints and the factory."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from prn_lightning.config import load_config
from prn_lightning.errors import ConfigError
from prn_lightning.models.prn import PRNLoss, PRNNetwork
from prn_lightning.models.prn.backbone import FrozenBackbone
from prn_lightning.models.prn.lightning_module import CheckpointError, PRNModule
from prn_lightning.models.prn.optimisation import (
    OptimiserSettings,
    PrototypeSettings,
    SchedulerSettings,
    WarmupCosine,
)
from prn_lightning.workflows.module_factory import build_module

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SIZE = 64


def tiny_module(scheduler: SchedulerSettings, lr: float = 1e-3) -> PRNModule:
    """As in a notebook: a network around a timm backbone, then the module's settings, no config anywhere."""
    torch.manual_seed(0)
    network = PRNNetwork(FrozenBackbone("tf_efficientnet_lite0", weights="none"), SIZE, msa_blocks=1,
                         decoder_channels=(16, 8, 8, 8))
    return PRNModule(network, PRNLoss(focal_weight=5.0), OptimiserSettings("adam", lr=lr, weight_decay=0.0),
                     scheduler, PrototypeSettings(ratio=0.5, iterations=5, seed=0), topk=10)


class _Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 8 * (index % 4):8 * (index % 4) + 12, 20:30] = 1
        return {"image": torch.rand(3, SIZE, SIZE, generator=generator), "mask": mask}


class _LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.used: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.used.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(module: PRNModule, tmp_path: Path, epochs: int = 2) -> tuple[pl.Trainer, _LearningRates]:
    rates = _LearningRates()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=3, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[rates])
    trainer.fit(module, train_dataloaders=DataLoader(_Pairs(), batch_size=2))
    return trainer, rates


def test_module_from_explicit_arguments_trains_with_warmup_cosine_per_step(tmp_path):
    settings = SchedulerSettings("warmup_cosine", warmup_steps=2, min_lr=1e-5)
    module = tiny_module(settings)
    module.set_prototype_images([torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))])
    trainer, rates = _fit(module, tmp_path)
    assert module.network.prototypes.fitted and module.network.prototypes.counts() == [2, 2, 2]
    total = 6  # 2 epochs x 3 batches: the trainer's estimated stepping batches
    expected = [1e-3 * WarmupCosine(2, total, 1e-5 / 1e-3)(s) for s in range(total)]
    assert rates.used == pytest.approx(expected, rel=1e-9)
    assert rates.used[0] == pytest.approx(1e-3 / 3) and rates.used[2] == pytest.approx(1e-3)  # warm-up, then peak
    assert rates.used[-1] == pytest.approx(1e-5)  # min_lr at the last optimiser step
    assert all(a < b for a, b in zip(rates.used[:3], rates.used[1:3]))
    assert all(a > b for a, b in zip(rates.used[2:], rates.used[3:]))

    # the checkpoint rebuilds the same module without a config and without re-clustering
    trainer.save_checkpoint(tmp_path / "module.ckpt")
    loaded = PRNModule.from_checkpoint(tmp_path / "module.ckpt").eval()
    assert loaded.run_config is None and loaded.topk == 10 and loaded.scheduler_settings == settings
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for expected_out, got in zip(module.eval().predict_images(images), loaded.predict_images(images)):
            torch.testing.assert_close(got, expected_out)


@pytest.mark.parametrize("name,factors", [
    ("none", [1, 1, 1, 1, 1, 1]),
    ("step", [1, 1, 1, 0.5, 0.5, 0.5]),  # step_size 1 epoch of 3 batches
    ("cosine", [1, 1, 1, 0.5, 0.5, 0.5]),  # cosine over 2 epochs: half way after the first
])
def test_epoch_schedules(tmp_path, name, factors):
    module = tiny_module(SchedulerSettings(name, step_size=1, gamma=0.5))
    module.set_prototype_images([torch.rand(2, 3, SIZE, SIZE)])
    _, rates = _fit(module, tmp_path)
    assert rates.used == pytest.approx([1e-3 * f for f in factors], rel=1e-9)


def test_schedule_mistakes_name_the_key(tmp_path):
    for settings, message in ((SchedulerSettings("warmup_cosine", warmup_steps=6), "warmup_steps"),
                              (SchedulerSettings("warmup_cosine", min_lr=1.0), "min_lr"),
                              (SchedulerSettings("linear"), "model.scheduler.name")):
        module = tiny_module(settings)
        module.set_prototype_images([torch.rand(2, 3, SIZE, SIZE)])
        with pytest.raises(ConfigError, match=message):
            _fit(module, tmp_path)


class _Kinds(_Pairs):
    """Training samples with their kind: 0 normal, 1 seen, 2 extended, 3 simulated (data.datasets.SampleKind)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(index), "kind": torch.tensor(index % 4)}


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_training_matches_every_sample_but_seen_anomalies_leave_one_out(tmp_path, monkeypatch, leave_one_out):
    module = tiny_module(SchedulerSettings())
    module.prototype_settings = PrototypeSettings(ratio=0.5, iterations=5, seed=0, leave_one_out=leave_one_out)
    module.set_prototype_images(DataLoader(_Pairs(), batch_size=4))
    bank, asked = module.network.prototypes, []
    plain = bank.nearest

    def recording(stage, features, members=None):
        asked.append(None if members is None else members.tolist())
        return plain(stage, features, members)

    monkeypatch.setattr(bank, "nearest", recording)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(_Kinds(), batch_size=4))
    expected = [True, False, True, True] if leave_one_out else None  # kinds 0, 1 (seen), 2, 3
    assert asked == [expected] * 6  # 2 steps x 3 prototype stages
    assert torch.isfinite(torch.stack([p.detach().sum() for p in module.parameters()])).all()
    module.eval()
    with torch.no_grad():  # evaluation never matches leave-one-out
        asked.clear()
        module.predict_images(torch.rand(2, 3, SIZE, SIZE))
    assert asked == [None] * 3


def test_fit_without_prototype_images_says_how():
    module = tiny_module(SchedulerSettings())
    with pytest.raises(RuntimeError, match="set_prototype_images"):
        module.on_fit_start()


def test_setting_defaults_are_the_config_defaults():
    model = OmegaConf.load(EXPERIMENTS / "model" / "base.yaml").model
    assert asdict(OptimiserSettings()) == OmegaConf.to_container(model.optimizer)
    assert asdict(SchedulerSettings()) == OmegaConf.to_container(model.scheduler)
    seed = OmegaConf.load(EXPERIMENTS / "default.yaml").seed
    assert PrototypeSettings() == PrototypeSettings(model.prototype_ratio, model.kmeans_iterations, seed,
                                                    model.prototype_leave_one_out)


def test_factory_maps_the_run_config_onto_the_arguments():
    cfg = load_config(["model.backbone.weights=none", "model.topk=7", "model.map_smoothing_sigma=1.5",
                       "model.scheduler.name=warmup_cosine", "model.scheduler.warmup_steps=3", "seed=5",
                       "model.optimizer.lr=0.002", "model.loss.focal_weight=2.0", "data.image_size=64",
                       "model.prototype_leave_one_out=true"])
    module = build_module(cfg, defect_types=["crack"])
    assert (module.topk, module.map_smoothing_sigma, module.defect_types) == (7, 1.5, ["crack"])
    assert module.scheduler_settings == SchedulerSettings("warmup_cosine", 100, 0.5, 3, 0.0)
    assert module.optimiser_settings.lr == 0.002 and module.loss.focal_weight == 2.0
    assert module.prototype_settings == PrototypeSettings(0.1, 25, 5, leave_one_out=True)
    assert module.network.image_size == (64, 64)
    assert module.run_config["model"]["topk"] == 7  # travels in checkpoints for `prn test`
    rebuilt = PRNNetwork.from_config(module.network.settings, module.network.image_size, pretrained_backbone=False)
    assert rebuilt.settings == module.network.settings
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in module.network.state_dict().items()}


@pytest.mark.parametrize("qkv_decay", ["null", "0.0"])
def test_qkv_weight_decay_is_a_group_of_every_attention_projection(qkv_decay):
    """model.optimizer.qkv_weight_decay gives the attention's Q/K/V projections, and nothing else, their own decay;
    unset (null), one group decays everything alike."""
    cfg = load_config(["model.backbone.weights=none", "data.image_size=64", "model.msa_blocks=2",
                       "model.msa_logit_scale=sqrt_token_dim", f"model.optimizer.qkv_weight_decay={qkv_decay}"])
    module = build_module(cfg)
    assert module.network.attention.stages[0][0].scale_rule == "sqrt_token_dim"
    module.trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    optimiser = module.configure_optimizers()  # scheduler none: the optimiser alone
    trainable = [p for p in module.parameters() if p.requires_grad]
    if qkv_decay == "null":
        assert len(optimiser.param_groups) == 1 and optimiser.param_groups[0]["weight_decay"] == 1e-2
        assert len(optimiser.param_groups[0]["params"]) == len(trainable)
        return
    rest, qkv = optimiser.param_groups
    assert (rest["weight_decay"], qkv["weight_decay"]) == (1e-2, 0.0)
    names = {id(p): name for name, p in module.named_parameters()}
    assert sorted(names[id(p)].rsplit(".", 3)[-2:][0] for p in qkv["params"]) == ["qkv"] * 2 * 2 * 3  # w, b x 2 x 3
    assert all(".qkv." not in names[id(p)] for p in rest["params"])
    assert len(rest["params"]) + len(qkv["params"]) == len(trainable)


def test_checkpoint_from_before_explicit_arguments_asks_to_retrain(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"cfg": {"model": {}}, "defect_types": []}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="retrain"):
        PRNModule.from_checkpoint(path)


def test_warmup_cosine_values():
    schedule = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert schedule(4) == 1.0 and schedule(13) == pytest.approx(0.1) and schedule(20) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
