"""The seen-anomaly draw: a few real test anomalies move to training and leave the test set.

PRN trains with `n` real anomalies per category (paper: 10). They are spread as evenly as possible over the defect
types (round-robin over the sorted types, a seeded shuffle inside each type), so the draw is reproducible from the
seed alone and no defect type is over-represented. The drawn images are removed from the test set, and their list
is written into the run directory so every result can be traced to the exact images the model saw.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prn_lightning.errors import DatasetError
from prn_lightning.data.sources.records import ANOMALOUS, CategorySplits, Sample


def select_seen_anomalies(test: list[Sample], n: int, seed: int) -> list[Sample]:
    """`n` anomalies of `test`, round-robin over sorted defect types; deterministic for a given seed."""
    if n < 0:
        raise DatasetError(f"data.num_seen_anomalies must be >= 0, got {n}")
    anomalies = [s for s in test if s.label == ANOMALOUS]
    if n > len(anomalies):
        raise DatasetError(f"data.num_seen_anomalies={n} but the test split holds only {len(anomalies)} anomalous "
                           f"images; set data.num_seen_anomalies to at most {len(anomalies)}")
    rng = np.random.default_rng(seed)
    queues = []
    for defect_type in sorted({s.defect_type for s in anomalies}):
        members = sorted((s for s in anomalies if s.defect_type == defect_type), key=lambda s: str(s.image_path))
        queues.append([members[i] for i in rng.permutation(len(members))])
    seen: list[Sample] = []
    depth = 0
    while len(seen) < n:
        for queue in queues:
            if depth < len(queue) and len(seen) < n:
                seen.append(queue[depth])
        depth += 1
    return seen


def split_seen(splits: CategorySplits, n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(seen anomalies, test split without them); the evaluation must only ever use the second."""
    seen = select_seen_anomalies(splits.test, n, seed)
    drawn = set(seen)
    return seen, [s for s in splits.test if s not in drawn]


def write_seen_list(path: str | Path, seen: list[Sample]) -> Path:
    """Write one line per seen anomaly: image path, defect type and mask path, tab-separated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# image_path\tdefect_type\tmask_path"]
    lines += [f"{s.image_path}\t{s.defect_type}\t{s.mask_path}" for s in seen]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_seen_list(path: str | Path) -> list[Sample]:
    """The samples written by `write_seen_list` (to evaluate a checkpoint on exactly its run's test set)."""
    samples = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            image, defect_type, mask = line.split("\t")
            samples.append(Sample(Path(image), Path(mask), ANOMALOUS, defect_type))
    return samples
