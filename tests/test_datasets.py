"""TrainMixDataset's seen and extended samples: whole seen images stay registered, pasted defects move."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from prn_lightning.config import load_config
from prn_lightning.config_checks import config_problems
from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.data.datasets import SampleKind, TrainMixDataset
from prn_lightning.data.sources.folder import read_folder_category
from prn_lightning.data.sources.records import ANOMALOUS
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.errors import ConfigError
from prn_lightning.imaging.tensors import load_image, load_mask
from prn_lightning.synthesis.textures import TextureSource

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """The synthetic object category at 64 px: 4 normals, 2 anomalies per defect type."""
    root = tmp_path_factory.mktemp("tiny")
    generate_synthetic(root, image_size=SIZE, num_train=4, num_test_good=1, num_per_defect=2, categories=("object",))
    return read_folder_category(Path(root), "object")


def mix(splits, kind: SampleKind, **augmentation) -> TrainMixDataset:
    seen = [s for s in splits.test if s.label == ANOMALOUS]
    return TrainMixDataset(splits.train, seen, image_size=SIZE, samples_per_epoch=16, anomaly_ratio=1.0,
                           weights={kind: 1.0}, texture_source=TextureSource(None, SIZE), estimate_objects=True,
                           seed=0, **augmentation)


def seen_samples(dataset: TrainMixDataset, epochs: int = 2):
    """(record, original image, original mask) of every seen sample of `epochs` epochs."""
    for epoch in range(epochs):
        plan = dataset.schedule(epoch)
        for position in range(len(dataset)):
            sample = dataset.seen[int(plan.primary[position])]
            yield (dataset[epoch, position], load_image(sample.image_path, SIZE),
                   load_mask(sample.mask_path, SIZE))


def test_whole_seen_samples_stay_pixel_registered_by_default(splits):
    """Default (photometric): the mask is exactly the original mask, and the image is the original up to colour."""
    changed = 0
    for record, image, mask in seen_samples(mix(splits, SampleKind.SEEN)):
        assert record["kind"] == SampleKind.SEEN
        assert np.array_equal(record["mask"][0].numpy(), mask)
        gray = record["image"].mean(0).numpy().ravel()
        assert np.corrcoef(gray, image.mean(2).ravel())[0, 1] > 0.9
        changed += not np.allclose(record["image"].permute(1, 2, 0).numpy() * 255, image, atol=0.5)
    assert changed > 0


def test_seen_augmentation_none_and_geometric(splits):
    for record, image, mask in seen_samples(mix(splits, SampleKind.SEEN, seen_augmentation="none"), epochs=1):
        assert np.array_equal(record["mask"][0].numpy(), mask)
        assert np.allclose(record["image"].permute(1, 2, 0).numpy() * 255, image, atol=1e-3)
    moved = [not np.array_equal(record["mask"][0].numpy(), mask)
             for record, _, mask in seen_samples(mix(splits, SampleKind.SEEN, seen_augmentation="geometric"))]
    assert sum(moved) >= len(moved) // 2  # the old behaviour: flips, turns and affine moves of the whole image


def test_extended_defects_keep_geometric_moves_by_default(splits):
    """The pasted defect is turned/flipped/scaled: its shape differs from every seen mask's defect some of the time."""
    dataset = mix(splits, SampleKind.EXTENDED)
    seen_areas = {int(load_mask(s.mask_path, SIZE).sum()) for s in dataset.seen}
    areas = [int(dataset[0, i]["mask"].sum()) for i in range(len(dataset))]
    assert all(a > 0 for a in areas)
    assert any(a not in seen_areas for a in areas)  # scaled by the affine move
    fixed = mix(splits, SampleKind.EXTENDED, extended_augmentation="none")
    assert all(int(fixed[0, i]["mask"].sum()) in seen_areas for i in range(len(fixed)))


def test_unknown_augmentation_names_the_key(splits):
    with pytest.raises(ConfigError, match="data.extended_defect_augmentation=rotate"):
        mix(splits, SampleKind.EXTENDED, extended_augmentation="rotate")


def test_augmentation_keys_are_checked_with_the_config():
    """Each bad value is one line naming the key, before any work starts (config_checks)."""
    data = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    assert not config_problems({"data": data})
    data.merge_with({"seen_augmentation": "flip", "extended_defect_augmentation": "none",
                     "source_augmentation": {"ops": ["gamma", "blur"], "per_source": 1}})
    problems = config_problems({"data": data})
    assert len(problems) == 2
    assert problems[0].startswith("data.seen_augmentation=flip is not allowed: it must be one of photometric")
    assert problems[1].startswith("data.source_augmentation.ops=['gamma', 'blur'] is not allowed")
    data.source_augmentation.ops = ["gamma", "invert"]
    data.source_augmentation.per_source = 3
    data.seen_augmentation = "none"
    assert config_problems({"data": data}) == [
        "data.source_augmentation.per_source=3 is not allowed: it must be at most the 2 ops listed in "
        "data.source_augmentation.ops"]
    data.source_augmentation.merge_with({"ops": ["rotate", "invert"], "per_source": 1, "in_place": 0.5})
    assert not config_problems({"data": data})
    data.source_augmentation.ops = ["rotate"]
    assert config_problems({"data": data}) == [
        "data.source_augmentation.in_place=0.5 is not allowed with per_source=1 and ops ['rotate']: recolouring in "
        "place needs per_source > 0 and an op other than rotate; set in_place=0 or list photometric ops"]
    data.source_augmentation.in_place = 1.5
    assert config_problems({"data": data})[0].startswith("data.source_augmentation.in_place=1.5 is not allowed")


def test_in_place_sources_reach_training_and_validation(splits):
    """With every source recoloured in place by `invert` and opacity 0, a simulated anomaly is the inverted normal
    image inside its Perlin mask, in training (the source handed to the device) and in validation."""
    cfg = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({"dataset": "folder", "root": str(splits.root), "category": "object", "image_size": 64,
                    "num_seen_anomalies": 4, "num_workers": 0, "val_fraction": 0.25, "samples_per_epoch": 16,
                    "beta": [0.0, 0.0], "generation": {"seen": False, "extended": False, "simulated": True},
                    "source_augmentation": {"ops": ["invert"], "per_source": 1, "in_place": 1.0}})
    dm = PRNDataModule(cfg, seed=0)
    dm.setup("fit")
    records = [dm.train_dataset[(0, i)] for i in range(len(dm.train_dataset))]
    simulated = [r for r in records if r["kind"] == SampleKind.SIMULATED]
    assert simulated and all(torch.allclose(r["source"], 1 - r["image"], atol=1e-6) for r in simulated)
    normals = len(dm.val_dataset.normals)
    for index in range(len(dm.val_dataset.samples), len(dm.val_dataset)):
        record = dm.val_dataset[index]
        base = dm.val_dataset[(index - len(dm.val_dataset.samples)) % normals]
        inside = record["mask"].bool().expand_as(record["image"])
        assert inside.any()
        assert torch.allclose(record["image"][inside], 1 - base["image"][inside], atol=1e-6)
        assert torch.equal(record["image"][~inside], base["image"][~inside])


@pytest.mark.parametrize("resize", ["squash", "keep-aspect"])
def test_datamodule_takes_height_and_width(splits, resize):
    """data.image_size=[64, 96]: every batch is 64 x 96; with keep-aspect the square images sit between black bands
    of 16 px that are never defective, in training (extended pastes) and in evaluation."""
    cfg = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({"dataset": "folder", "root": str(splits.root), "category": "object", "image_size": [64, 96],
                    "resize": resize, "num_seen_anomalies": 4, "batch_size": 8, "eval_batch_size": 8,
                    "num_workers": 0, "val_fraction": 0.25, "samples_per_epoch": 32,
                    "generation": {"seen": False, "extended": True, "simulated": False}})
    dm = PRNDataModule(cfg, seed=0)
    dm.setup("fit")
    augmentation = dm.train_dataset.texture_source.augmentation  # data.source_augmentation reaches the sources
    assert augmentation.ops == list(cfg.source_augmentation.ops) and augmentation.per_source == 3
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    batches = [dm.on_after_batch_transfer(b, 0) for b in loader]
    evaluation = list(dm.test_dataloader()) + list(dm.val_dataloader())
    for batch in batches + evaluation:
        assert batch["image"].shape[1:] == (3, 64, 96) and batch["mask"].shape[1:] == (1, 64, 96)
    if resize == "keep-aspect":
        for batch in batches + evaluation:
            bands = torch.cat([batch["mask"][..., :16], batch["mask"][..., -16:]], -1)
            assert not bands.any()
        for batch in evaluation:
            assert not torch.cat([batch["image"][..., :16], batch["image"][..., -16:]], -1).any()
    assert sum(int(b["label"].sum()) for b in batches) == 16  # extended anomalies: every one landed in the image


def test_a_run_config_from_before_the_new_keys_keeps_its_behaviour(splits):
    """`prn test` of an older run: no data.resize / *_augmentation keys -> squash, geometric, no source ops."""
    cfg = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({"dataset": "folder", "root": str(splits.root), "category": "object", "image_size": 64,
                    "num_seen_anomalies": 4, "num_workers": 0, "val_fraction": 0.25})
    for key in ("resize", "seen_augmentation", "extended_defect_augmentation", "source_augmentation"):
        del cfg[key]
    OmegaConf.set_struct(cfg, True)
    dm = PRNDataModule(cfg, seed=0)
    dm.setup("fit")
    assert dm.resize == "squash" and dm.train_dataset.texture_source.augmentation.per_source == 0
    assert len(dm.train_dataset._seen_augmentation.transforms) == 5  # flips, turns, affine, colour
    assert next(iter(dm.test_dataloader()))["image"].shape[1:] == (3, 64, 64)


@pytest.mark.parametrize("name, size", [("kolektor", [512, 192]), ("magnetic_tile", 256), ("tire", 256)])
def test_shared_set_data_files_compose_with_the_cpu_experiment(name, size):
    cfg = load_config(["experiment=folder_cpu", f"data={name}"])
    assert (cfg.data.dataset, cfg.data.root, cfg.data.category) == ("folder", "../shared/data", name)
    assert OmegaConf.to_container(cfg.data)["image_size"] == size and cfg.data.resize == "squash"


@pytest.mark.parametrize("name, own_keys", [
    ("tire", {("model", "prototype_match"): "location", ("model", "prototype_neighbourhood"): 1,
              ("model", "prototype_ratio"): 0.4, ("model", "prototype_leave_one_out"): True}),
    ("magnetic_tile", {("trainer", "max_epochs"): 15, ("model", "prototype_ratio"): 0.4,
                       ("model", "prototype_leave_one_out"): True}),
    ("kolektor", {("trainer", "max_epochs"): 12}),
])
def test_shared_set_experiment_is_the_folder_recipe_with_its_own_keys(name, own_keys):
    """`experiment=NAME_cpu` (the quality benchmark's run of a shared set) differs from the folder CPU recipe on that
    set's data file by its documented keys alone (tire: per-location matching; magnetic_tile and kolektor: a longer
    schedule; tire and magnetic_tile: more prototypes, matched leave-one-out in training)."""
    own = OmegaConf.to_container(load_config([f"experiment={name}_cpu"]))
    folder = OmegaConf.to_container(load_config(["experiment=folder_cpu", f"data={name}"]))
    assert own["experiment"] == f"{name}_cpu"
    for (group, key), value in own_keys.items():
        assert own[group][key] == value != folder[group][key]
    for config in (own, folder):
        config.pop("experiment")
        for group, key in own_keys:
            del config[group][key]
    assert own == folder
    assert config_problems(load_config([f"experiment={name}_cpu"])) == []
