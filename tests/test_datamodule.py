"""PRNDataModule on a tiny MVTec-layout dataset: splits, batch contract, kinds, reproducibility, DDP samplers."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from prn_lightning.data.datamodule import PRNDataModule
from prn_lightning.data.datasets import SampleKind
from prn_lightning.data.samplers import EpochScheduleSampler, UnrepeatedDistributedSampler
from prn_lightning.data.seen import read_seen_list
from prn_lightning.data.sources.synthetic import generate_synthetic
from prn_lightning.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
TRAIN_KEYS = {"image", "mask", "label", "kind"}
EVAL_KEYS = {"image", "mask", "label", "defect_id", "image_path", "index"}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    """object category: 12 train/good, 3 test/good, 3 per defect type (crack, missing, scratch, stain), 64 px."""
    root = tmp_path_factory.mktemp("tiny")
    generate_synthetic(root, image_size=SIZE, num_train=12, num_test_good=3, num_per_defect=3, categories=("object",))
    return root


def data_cfg(root: Path, **overrides):
    cfg = OmegaConf.load(REPO / "experiments" / "data" / "base.yaml").data
    cfg.merge_with({"dataset": "folder", "root": str(root), "category": "object", "image_size": SIZE,
                    "num_seen_anomalies": 4, "batch_size": 4, "eval_batch_size": 5, "num_workers": 0,
                    "val_fraction": 0.25, "val_synthetic_per_normal": 2})
    cfg.merge_with(overrides)
    return cfg


def make(root: Path, seed: int = 0, run_dir: Path | None = None, **overrides) -> PRNDataModule:
    dm = PRNDataModule(data_cfg(root, **overrides), seed=seed, run_dir=run_dir)
    dm.setup("fit")
    return dm


def train_epoch(dm: PRNDataModule, epoch: int = 0) -> list[dict]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [dm.on_after_batch_transfer(batch, 0) for batch in loader]


def test_splits_keep_evaluation_clean(dataset_root, tmp_path):
    dm = make(dataset_root, run_dir=tmp_path / "run")
    test_paths = {s.image_path for s in dm.test_samples}
    seen_paths = {s.image_path for s in dm.seen_anomalies}
    assert len(seen_paths) == 4 and not seen_paths & test_paths
    assert len(dm.test_samples) == 3 + 4 * 3 - 4
    assert dm.defect_types == ["crack", "missing", "scratch", "stain"]
    val_paths = {s.image_path for s in dm.val_samples}
    train_paths = {s.image_path for s in dm.train_normals}
    assert len(val_paths) == 3 and not val_paths & train_paths and not val_paths & test_paths
    assert all("/train/good/" in p.as_posix() for p in val_paths | train_paths)
    assert [s.image_path for s in read_seen_list(tmp_path / "run" / "seen_anomalies.txt")] == \
        [s.image_path for s in dm.seen_anomalies]
    prototype_paths = [p for b in dm.prototype_dataloader() for p in b["image_path"]]
    assert prototype_paths == [str(s.image_path) for s in dm.train_normals]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_contract(dataset_root, workers):
    dm = make(dataset_root, num_workers=workers)
    batches = train_epoch(dm)
    assert sum(len(b["label"]) for b in batches) == dm.samples_per_epoch == round(9 / 0.5)
    for batch in batches:
        assert set(batch) == TRAIN_KEYS
        assert batch["image"].shape[1:] == (3, SIZE, SIZE) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape[1:] == (1, SIZE, SIZE) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
        assert batch["label"].dtype == torch.int64 and batch["kind"].dtype == torch.int64
        assert torch.equal(batch["label"], (batch["mask"].flatten(1).amax(1) > 0).long())
        anomalous = batch["kind"] != SampleKind.NORMAL
        assert torch.equal(batch["label"].bool(), anomalous)
        assert batch["image"].min() >= 0 and batch["image"].max() <= 1  # [0, 1]: the network normalises
    for loader, n in ((dm.val_dataloader(), 3 * 3), (dm.test_dataloader(), 11)):
        batches = [dm.on_after_batch_transfer(b, 0) for b in loader]
        assert sum(len(b["label"]) for b in batches) == n
        for batch in batches:
            assert set(batch) == EVAL_KEYS and isinstance(batch["image_path"], list)
            assert batch["image"].shape[1:] == (3, SIZE, SIZE) and batch["mask"].shape[1:] == (1, SIZE, SIZE)
            for key in ("label", "defect_id", "index"):
                assert batch[key].dtype == torch.int64
        indices = torch.cat([b["index"] for b in batches])
        assert torch.equal(indices, torch.arange(n))


def test_test_labels_and_defect_ids(dataset_root):
    dm = make(dataset_root)
    batch = next(iter(dm.test_dataloader()))
    for label, defect_id, path, mask in zip(batch["label"], batch["defect_id"], batch["image_path"],
                                            batch["mask"]):
        if label == 0:
            assert defect_id == -1 and "/test/good/" in path and not mask.any()
        else:
            assert dm.defect_types[defect_id] == Path(path).parent.name and mask.any()


def test_validation_anomalies_are_fixed_and_on_held_out_normals(dataset_root):
    dm = make(dataset_root)
    first = [b for b in dm.val_dataloader()]
    second = [b for b in make(dataset_root).val_dataloader()]
    for a, b in zip(first, second):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    labels = torch.cat([b["label"] for b in first])
    masks = torch.cat([b["mask"] for b in first])
    assert labels.tolist() == [0] * 3 + [1] * 6
    assert (masks[3:].flatten(1).amax(1) == 1).all() and not masks[:3].any()
    assert set(p for b in first for p in b["image_path"]) == {str(s.image_path) for s in dm.val_samples}


def test_real_validation_anomalies_stay_out_of_training_and_test(dataset_root, tmp_path):
    dm = make(dataset_root, run_dir=tmp_path / "run", num_val_anomalies=4)
    plain = make(dataset_root)
    assert [s.image_path for s in dm.seen_anomalies] == [s.image_path for s in plain.seen_anomalies]
    real = {s.image_path for s in dm.val_anomalies}
    assert len(real) == 4 and not real & {s.image_path for s in dm.test_samples + dm.seen_anomalies}
    assert len(dm.test_samples) == len(plain.test_samples) - 4
    assert dm.train_normals == plain.train_normals and dm.val_samples == plain.val_samples
    # 3 held-out normals, the 4 real anomalies with their own masks and defect ids, 2 simulated per normal
    records = [dm.val_dataset[i] for i in range(len(dm.val_dataset))]
    assert len(records) == 3 + 4 + 3 * 2
    found = [r for r in records if r["defect_id"] >= 0]
    assert {Path(r["image_path"]) for r in found} == real
    assert all(r["label"] == 1 and r["mask"].any() for r in found)
    assert {dm.defect_types[r["defect_id"]] for r in found} == {s.defect_type for s in dm.val_anomalies}
    simulated = [r for r in records if r["label"] == 1 and r["defect_id"] == -1]
    plain_simulated = [plain.val_dataset[i] for i in range(3, len(plain.val_dataset))]
    assert len(simulated) == len(plain_simulated) == 6  # the same simulated anomalies as without real ones
    for a, b in zip(simulated, plain_simulated):
        assert a["image_path"] == b["image_path"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])
    # recorded beside the seen list: `prn test` and resumed runs take both lists, not a new draw
    recorded = tmp_path / "run" / "val_anomalies.txt"
    assert [s.image_path for s in read_seen_list(recorded)] == [s.image_path for s in dm.val_anomalies]
    again = PRNDataModule(data_cfg(dataset_root, num_val_anomalies=4), seed=5,
                          seen_list=tmp_path / "run" / "seen_anomalies.txt")
    again.setup("test")
    for name in ("seen_anomalies", "val_anomalies", "test_samples"):
        assert [s.image_path for s in getattr(again, name)] == [s.image_path for s in getattr(dm, name)], name


def test_a_run_without_its_validation_anomaly_list_is_refused(dataset_root, tmp_path):
    make(dataset_root, run_dir=tmp_path / "run", num_val_anomalies=2)
    (tmp_path / "run" / "val_anomalies.txt").unlink()
    dm = PRNDataModule(data_cfg(dataset_root, num_val_anomalies=2), seed=0,
                       seen_list=tmp_path / "run" / "seen_anomalies.txt")
    with pytest.raises(DatasetError, match="num_val_anomalies=2 but their list .*val_anomalies.txt does not exist"):
        dm.setup("test")


def test_kind_counts_follow_the_config(dataset_root):
    dm = make(dataset_root, samples_per_epoch=40, anomaly_ratio=0.6,
              generation={"seen_weight": 1.0, "extended_weight": 1.0, "simulated_weight": 2.0})
    counts = Counter(torch.cat([b["kind"] for b in train_epoch(dm)]).tolist())
    assert counts == {SampleKind.NORMAL: 16, SampleKind.SEEN: 6, SampleKind.EXTENDED: 6, SampleKind.SIMULATED: 12}
    dm = make(dataset_root, samples_per_epoch=20, generation={"seen": False, "extended": False})
    assert set(torch.cat([b["kind"] for b in train_epoch(dm)]).tolist()) == {SampleKind.NORMAL,
                                                                          SampleKind.SIMULATED}
    dm = make(dataset_root, num_seen_anomalies=0, samples_per_epoch=20)
    assert set(dm.train_dataset.counts) == {SampleKind.NORMAL, SampleKind.SIMULATED}


def test_training_synthesis_changes_only_the_mask_region(dataset_root):
    dm = make(dataset_root, samples_per_epoch=16, batch_size=16)  # one batch: 8 normal, 3 seen, 3 extended, 2 sim.
    raw = next(iter(dm.train_dataloader()))
    done = dm.complete_training_batch({k: v.clone() for k, v in raw.items()})
    untouched = raw["image"]
    outside = done["mask"].expand_as(done["image"]) == 0
    assert torch.allclose(done["image"][outside], untouched[outside], atol=1e-6)
    for kind in (SampleKind.NORMAL, SampleKind.SEEN):
        rows = raw["kind"] == kind
        assert torch.allclose(done["image"][rows], untouched[rows], atol=1e-6)
    for kind in (SampleKind.EXTENDED, SampleKind.SIMULATED):
        rows = raw["kind"] == kind
        assert rows.any() and (done["mask"][rows].flatten(1).amax(1) == 1).all()
        inside = done["mask"][rows].expand_as(done["image"][rows]) == 1
        assert (done["image"][rows][inside] != untouched[rows][inside]).float().mean() > 0.9


def test_same_seed_same_epoch_whatever_the_workers(dataset_root):
    a = train_epoch(make(dataset_root, seed=5, num_workers=0))
    b = train_epoch(make(dataset_root, seed=5, num_workers=2))
    for x, y in zip(a, b):
        for key in TRAIN_KEYS:
            assert torch.equal(x[key], y[key]), key
    other_epoch = train_epoch(make(dataset_root, seed=5), epoch=1)
    other_seed = train_epoch(make(dataset_root, seed=6))
    assert not torch.equal(a[0]["image"], other_epoch[0]["image"])
    assert not torch.equal(a[0]["image"], other_seed[0]["image"])


def test_unrepeated_sampler_covers_odd_lengths_exactly_once():
    for length in (1, 7, 13):
        shares = [list(UnrepeatedDistributedSampler(length, 2, rank)) for rank in range(2)]
        assert sorted(shares[0] + shares[1]) == list(range(length))
        assert [len(UnrepeatedDistributedSampler(length, 2, r)) for r in range(2)] == [len(s) for s in shares]


def test_training_sampler_splits_an_epoch_evenly_between_ranks():
    samplers = [EpochScheduleSampler(7, 2, rank) for rank in range(2)]
    for sampler in samplers:
        sampler.set_epoch(3)
    keys = [list(s) for s in samplers]
    assert len(keys[0]) == len(keys[1]) == 4
    assert {p for k in keys for _, p in k} == set(range(7)) and all(e == 3 for k in keys for e, _ in k)


def _ddp_eval_indices(rank: int, world: int, root: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = make(Path(root))
        indices = {name: torch.cat([b["index"] for b in loader]).tolist()
                   for name, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()))}
        train = sum(len(b["kind"]) for b in dm.train_dataloader())
        torch.save({"indices": indices, "train": train}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_evaluation_sees_each_sample_once(dataset_root, tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_eval_indices, args=(2, str(dataset_root), port, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, n in (("val", 9), ("test", 11)):
        merged = results[0]["indices"][name] + results[1]["indices"][name]
        assert sorted(merged) == list(range(n)), name  # 9 and 11 are odd: no padding, no duplicate
    assert results[0]["train"] == results[1]["train"] == 9  # 18 samples per epoch, half per rank


class _Recorder(pl.LightningModule):
    """Checks inside a real Trainer that training batches are completed and evaluation batches left in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Conv2d(3, 1, 1)
        self.train_kinds: list[list[int]] = []
        self.val_keys: set[str] = set()

    def training_step(self, batch, batch_idx):
        assert set(batch) == TRAIN_KEYS
        self.train_kinds.append(batch["kind"].tolist())
        return torch.nn.functional.binary_cross_entropy_with_logits(self.layer(batch["image"]), batch["mask"])

    def validation_step(self, batch, batch_idx):
        self.val_keys |= set(batch)
        assert batch["image"].min() >= 0 and batch["image"].max() <= 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_drives_epochs_and_hooks(dataset_root, tmp_path):
    def fit() -> list[list[int]]:
        module = _Recorder()
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, use_distributed_sampler=False,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=PRNDataModule(data_cfg(dataset_root), seed=1))
        assert module.val_keys == EVAL_KEYS
        return module.train_kinds

    kinds = fit()
    per_epoch = 5  # 18 samples per epoch in batches of 4
    assert len(kinds) == 2 * per_epoch
    assert kinds[:per_epoch] != kinds[per_epoch:]  # Lightning moved the sampler to epoch 1
    assert kinds == fit()


def test_perlin_threshold_range_reaches_training_and_validation_masks(dataset_root):
    # data.perlin.min_threshold: larger simulated anomalies in training batches and in the validation split alike
    def simulated_cover(**perlin) -> tuple[float, float]:
        dm = make(dataset_root, generation={"seen": False, "extended": False}, perlin=perlin,
                  val_synthetic_per_normal=16)
        train = torch.cat([b["mask"][b["kind"] == SampleKind.SIMULATED] for b in train_epoch(dm)])
        val = torch.cat([b["mask"][b["label"] == 1] for b in dm.val_dataloader()])
        return float(train.mean()), float(val.mean())

    (train_fixed, val_fixed), (train_range, val_range) = simulated_cover(), simulated_cover(min_threshold=0.1)
    assert train_range > 2 * train_fixed and val_range > 2 * val_fixed


def test_config_errors_name_the_key(dataset_root):
    with pytest.raises(DatasetError, match="num_seen_anomalies"):
        make(dataset_root, num_seen_anomalies=13)
    with pytest.raises(ConfigError, match="data.generation"):
        make(dataset_root, generation={"seen": False, "extended": False, "simulated": False})
    with pytest.raises(ConfigError, match="data.generation"):
        make(dataset_root, num_seen_anomalies=0, generation={"simulated": False})
    with pytest.raises(ConfigError, match="data.foreground"):
        make(dataset_root, foreground="maybe")
    with pytest.raises(ConfigError, match="data.val_fraction"):
        make(dataset_root, val_fraction=1.0)
    with pytest.raises(ConfigError, match="data.perlin"):
        make(dataset_root, perlin={"min_scale": 4, "max_scale": 2})
    with pytest.raises(ConfigError, match="data.anomaly_ratio"):
        make(dataset_root, anomaly_ratio=0.0)
