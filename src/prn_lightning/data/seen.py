"""The seen-anomaly draw: a few real test anomalies move to training and leave the test set.

PRN trains with `n` real anomalies per category (paper: 10). They are spread as evenly as possible over the defect
types (round-robin over the sorted types, a seeded shuffle inside each type), so the draw is reproducible from the
seed alone and no defect type is over-represented. The drawn images are removed from the test set, and their list
is written into the run directory so every result can be traced to the exact images the model saw. An anomaly
whose mask is empty at the training resolution is never drawn (nothing to learn from); it stays in the test set.
`prn test` and resumed runs do not draw again: they take the run's recorded list (`split_recorded_seen`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prn_lightning.data.sources.records import ANOMALOUS, CategorySplits, Sample
from prn_lightning.errors import DatasetError


def select_seen_anomalies(test: list[Sample], n: int, seed: int, unusable: Iterable[Sample] = ()) -> list[Sample]:
    """`n` anomalies of `test`, round-robin over sorted defect types; deterministic for a given seed.

    `unusable` anomalies (an empty mask at the training resolution: nothing to learn from) are never drawn."""
    if n < 0:
        raise DatasetError(f"data.num_seen_anomalies must be >= 0, got {n}")
    excluded = set(unusable)
    anomalies = [s for s in test if s.label == ANOMALOUS and s not in excluded]
    if n > len(anomalies):
        unusable_note = (f" with a non-empty mask ({len(excluded & set(test))} more have an empty mask)"
                         if excluded & set(test) else "")
        raise DatasetError(f"data.num_seen_anomalies={n} but the test split holds only {len(anomalies)} anomalous "
                           f"images{unusable_note}; set data.num_seen_anomalies to at most {len(anomalies)}")
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


def split_seen(splits: CategorySplits, n: int, seed: int,
               unusable: Iterable[Sample] = ()) -> tuple[list[Sample], list[Sample]]:
    """(seen anomalies, test split without them); the evaluation must only ever use the second."""
    seen = select_seen_anomalies(splits.test, n, seed, unusable)
    drawn = set(seen)
    return seen, [s for s in splits.test if s not in drawn]


def _key(path: Path, root: Path) -> str:
    """A path as seen from its dataset root, so a dataset that moved (another data.root) still matches."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix()


def split_recorded_seen(splits: CategorySplits, recorded: list[Sample],
                        recorded_root: str | Path) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """A run's recorded seen anomalies against this dataset: (those found in its test split, the test split without
    them, the recorded ones not found). Paths are compared below each side's dataset root."""
    wanted = {_key(s.image_path, Path(recorded_root)): s for s in recorded}
    found = {_key(s.image_path, splits.root): s for s in splits.test}
    seen = [found[key] for key in wanted if key in found]
    missing = [sample for key, sample in wanted.items() if key not in found]
    held = set(seen)
    return seen, [s for s in splits.test if s not in held], missing


def write_seen_list(path: str | Path, seen: list[Sample]) -> Path:
    """Write one line per seen anomaly: image path, defect type and mask path, tab-separated (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# image_path\tdefect_type\tmask_path"]
    lines += [f"{s.image_path}\t{s.defect_type}\t{s.mask_path}" for s in seen]
    partial = path.with_name(path.name + ".tmp")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(path)  # atomic: a reader never sees half a list
    return path


def read_seen_list(path: str | Path) -> list[Sample]:
    """The samples written by `write_seen_list` (to evaluate a checkpoint on exactly its run's test set)."""
    samples = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            image, defect_type, mask = line.split("\t")
            samples.append(Sample(Path(image), Path(mask), ANOMALOUS, defect_type))
    return samples
