"""The same test outputs give identical metrics with 1 and 2 processes (Lightning ddp_spawn on CPU, gloo).

7 images (an odd count) are split with the unrepeated sampler, so each is seen exactly once; the metric states are
gathered by torchmetrics. Classes are module-level so ddp_spawn can pickle them.
"""
from __future__ import annotations

import atexit
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from prn_lightning.data.samplers import UnrepeatedDistributedSampler, world_size_and_rank
from prn_lightning.metrics import AnomalyMetrics

DEFECT_TYPES = ["crack", "hole"]
NUM_IMAGES = 7
SIZE = 16


class IndexedTestImages(Dataset):
    """Deterministic test outputs computed from the sample index: every third image is normal."""

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        mask = torch.zeros(SIZE, SIZE)
        if index % 3:
            y, x = torch.randint(0, SIZE - 5, (2,), generator=generator).tolist()
            mask[y : y + 4, x : x + 3] = 1
            mask[y + 4, x + 3] = 1  # diagonal neighbour: same region
            mask[(y + 9) % SIZE, (x + 8) % SIZE] = 1
        anomaly_map = torch.round(torch.rand(SIZE, SIZE, generator=generator) * 20) / 20 + 0.25 * mask
        label = int(mask.any())
        return {
            "anomaly_map": anomaly_map,
            "mask": mask,
            "score": anomaly_map.flatten().topk(5).values.mean(),
            "label": label,
            "defect_id": index % 2 if label else -1,
        }


class MetricsOnlyModule(L.LightningModule):
    """Feeds the dataset's outputs into AnomalyMetrics and writes what every rank computes to a JSON file."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.metrics = AnomalyMetrics(DEFECT_TYPES)

    def test_dataloader(self) -> DataLoader:
        world_size, rank = world_size_and_rank()
        dataset = IndexedTestImages()
        return DataLoader(dataset, batch_size=2, sampler=UnrepeatedDistributedSampler(len(dataset), world_size, rank))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.metrics.update(batch["anomaly_map"], batch["mask"], batch["score"], batch["label"], batch["defect_id"])

    def on_test_epoch_end(self) -> None:
        # per_defect() first: it must gather the states itself; compute() then reuses that evaluation.
        result = {
            "per_defect": self.metrics.per_defect(),
            "curves": {k: {n: v.tolist() for n, v in c.items()} for k, c in self.metrics.curves().items()},
            "summary": self.metrics.compute(),
            "local_images": sum(len(s) for s in self.metrics.scores),
        }
        path = Path(self.out_dir) / f"world{self.trainer.world_size}_rank{self.global_rank}.json"
        path.write_text(json.dumps(result))

    def on_test_end(self) -> None:
        # Destroy the gloo group at exit, after Lightning's own teardown: left alive, its threads can abort the
        # spawned process ("terminate called without an active exception").
        if torch.distributed.is_initialized():
            atexit.register(torch.distributed.destroy_process_group)


def run_test(tmp_path: Path, devices: int) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.test(MetricsOnlyModule(str(tmp_path)))


def assert_same_values(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_values(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_values(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-12, nan_ok=True)
    else:
        assert a == b


def test_one_and_two_processes_give_identical_metrics(tmp_path: Path) -> None:
    run_test(tmp_path, devices=1)
    run_test(tmp_path, devices=2)
    single = json.loads((tmp_path / "world1_rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"world2_rank{r}.json").read_text()) for r in (0, 1)]
    assert single["local_images"] == NUM_IMAGES
    assert [r.pop("local_images") for r in ranks] == [4, 3]  # no padded duplicate
    single.pop("local_images")
    assert all(np.isfinite(v) for v in single["summary"].values())
    assert len(single["per_defect"]) == 2 and all(row["num_images"] > 0 for row in single["per_defect"])
    for rank in ranks:
        assert_same_values(single, rank)
