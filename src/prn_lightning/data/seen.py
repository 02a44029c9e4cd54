"""The seen-anomaly draw: a few real test anomalies move to training and leave the test set.

PRN trains with `n` real anomalies per category (paper: 10). They are spread as evenly as possible over the defect
types (round-robin over the sorted types, a seeded shuffle inside each type), so the draw is reproducible from the
seed alone and no defect type is over-represented. The drawn images are removed from the test set, and their list
is written into the run directory so every result can be traced to the exact images the model saw. An anomaly
whose mask is empty at the training resolution is never drawn (nothing to learn from); it stays in the test set.
`prn test` and resumed runs do not draw again: they take the run's recorded list (`split_recorded_seen`).

Validation anomalies (`data.num_val_anomalies`, default 0) are real anomalies drawn the same way right after the seen
ones (the same round-robin continued), so adding them never changes which anomalies are seen. They leave the test
set as well and join the validation split: the one validation signal that sees real defects and not only
simulated ones. They are recorded beside the seen list (`val_anomalies.txt`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from prn_lightning.data.sources.records import ANOMALOUS, CategorySplits, Sample
from prn_lightning.errors import DatasetError

SEEN_LIST = "seen_anomalies.txt"  # in a run directory: the seen anomalies, one per line (`write_seen_list`)
VAL_ANOMALY_LIST = "val_anomalies.txt"  # beside it, when the run drew validation anomalies (same format)


def select_seen_anomalies(test: list[Sample], n: int, seed: int, unusable: Iterable[Sample] = ()) -> list[Sample]:
    """`n` anomalies of `test`, round-robin over sorted defect types; deterministic for a given seed.

    `unusable` anomalies (an empty mask at the training resolution: nothing to learn from) are never drawn."""
    return select_held_out_anomalies(test, n, 0, seed, unusable)[0]


def select_held_out_anomalies(test: list[Sample], num_seen: int, num_val: int, seed: int,
                              unusable: Iterable[Sample] = ()) -> tuple[list[Sample], list[Sample]]:
    """(`num_seen` seen anomalies, the next `num_val` of the same round-robin draw for validation).

    The draw is one sequence, so the seen anomalies do not depend on `num_val`."""
    for name, value in (("num_seen_anomalies", num_seen), ("num_val_anomalies", num_val)):
        if value < 0:
            raise DatasetError(f"data.{name} must be >= 0, got {value}")
    n = num_seen + num_val
    excluded = set(unusable)
    anomalies = [s for s in test if s.label == ANOMALOUS and s not in excluded]
    if n > len(anomalies):
        unusable_note = (f" with a non-empty mask ({len(excluded & set(test))} more have an empty mask)"
                         if excluded & set(test) else "")
        asked = (f"data.num_seen_anomalies={num_seen} + data.num_val_anomalies={num_val}" if num_val
                 else f"data.num_seen_anomalies={num_seen}")
        fix = ("lower data.num_seen_anomalies or data.num_val_anomalies so that their sum is at most "
               if num_val else "set data.num_seen_anomalies to at most ")
        raise DatasetError(f"{asked} but the test split holds only {len(anomalies)} anomalous "
                           f"images{unusable_note}; {fix}{len(anomalies)}")
    rng = np.random.default_rng(seed)
    queues = []
    for defect_type in sorted({s.defect_type for s in anomalies}):
        members = sorted((s for s in anomalies if s.defect_type == defect_type), key=lambda s: str(s.image_path))
        queues.append([members[i] for i in rng.permutation(len(members))])
    drawn: list[Sample] = []
    depth = 0
    while len(drawn) < n:
        for queue in queues:
            if depth < len(queue) and len(drawn) < n:
                drawn.append(queue[depth])
        depth += 1
    return drawn[:num_seen], drawn[num_seen:]


def split_seen(splits: CategorySplits, n: int, seed: int,
               unusable: Iterable[Sample] = ()) -> tuple[list[Sample], list[Sample]]:
    """(seen anomalies, test split without them); the evaluation must only ever use the second."""
    seen, _, test = split_held_out(splits, n, 0, seed, unusable)
    return seen, test


def split_held_out(splits: CategorySplits, num_seen: int, num_val: int, seed: int,
                   unusable: Iterable[Sample] = ()) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(seen anomalies, validation anomalies, test split without either); the evaluation uses only the third."""
    seen, val = select_held_out_anomalies(splits.test, num_seen, num_val, seed, unusable)
    drawn = set(seen) | set(val)
    return seen, val, [s for s in splits.test if s not in drawn]


def _key(path: Path, root: Path) -> str:
    """A path as seen from its dataset root, so a dataset that moved (another data.root) still matches."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix()


def split_recorded_seen(test: list[Sample], root: str | Path, recorded: list[Sample],
                        recorded_root: str | Path) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """A run's recorded anomalies against `test` (a test split below `root`): (those found in it, `test` without them,
    the recorded ones not found). Paths are compared below each side's dataset root."""
    wanted = {_key(s.image_path, Path(recorded_root)): s for s in recorded}
    found = {_key(s.image_path, Path(root)): s for s in test}
    held = [found[key] for key in wanted if key in found]
    missing = [sample for key, sample in wanted.items() if key not in found]
    drawn = set(held)
    return held, [s for s in test if s not in drawn], missing


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
