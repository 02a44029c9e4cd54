"""Run directories: created atomically and never shared, reused only to resume, removed again when a run fails early.

A new run gets runs_root/<dataset>/<category>/<YYYYmmdd-HHMMSS>-<random suffix>, made with a plain `mkdir` (no
exist_ok), so two runs started in the same second get two directories. An explicit `run_dir=` may name a new or an
empty folder; a folder that already holds a run (its config.yaml) is only reused by `resume=true`, which takes the
run's own config.yaml and refuses command-line values that would change the result (`differing_keys`).
Whatever is written into a run directory is written atomically (temporary file, then rename): a reader or a resumed
run never sees half a file.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from prn_lightning.config import apply_overrides, load_config
from prn_lightning.config_checks import runs_root_problem
from prn_lightning.errors import ConfigError

CONFIG_FILE = "config.yaml"
RESUME_LOG = "resume_overrides.txt"  # appended: the overrides each resume added (e.g. a longer max_epochs)
# Keys a resumed run may change: they cannot change its result, only how long it runs, where it reports and how
# fast it loads data (results do not depend on the number of loader workers).
RESUME_SAFE_KEYS = ("resume", "run_dir", "ckpt", "runs_root", "experiment", "predict.", "logger.",
                    "trainer.max_epochs", "trainer.max_steps", "trainer.enable_progress_bar",
                    "trainer.log_every_n_steps", "data.num_workers")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, (DictConfig, dict)):
        items = node.items() if isinstance(node, dict) else ((k, node[k]) for k in node)
        flat: dict[str, Any] = {}
        for key, value in items:
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return {prefix[:-1]: node}


def differing_keys(first: DictConfig, second: DictConfig, safe: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (or that only one has), except `safe` ones (a key, or a
    prefix ending in '.')."""
    a, b = _flatten(first), _flatten(second)
    safe = tuple(safe)
    return sorted(key for key in set(a) | set(b)
                  if (key not in a or key not in b or a[key] != b[key])
                  and not any(key == s or (s.endswith(".") and key.startswith(s)) for s in safe))


def save_config(cfg: DictConfig, path: Path, *, exclusive: bool = False) -> None:
    """Write `cfg` resolved as YAML atomically; `exclusive=True` fails with FileExistsError when `path` exists
    (claims a run directory: of two runs racing for one folder exactly one wins)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    OmegaConf.save(cfg, partial, resolve=True)
    try:
        if exclusive:
            os.link(partial, path)  # atomic and refuses an existing file
        else:
            partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def holds_run(folder: Path) -> bool:
    """True when `folder` already holds a run (its config.yaml or a checkpoint)."""
    return (folder / CONFIG_FILE).is_file() or (folder / "checkpoints").is_dir()


def _make_parent(folder: Path, runs_root: Any) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problem = runs_root_problem(runs_root) or f"cannot create {folder}: {err.strerror or err}"
        raise ConfigError(problem) from err


def new_run_dir(runs_root: str | Path, dataset: str, category: str) -> Path:
    """A fresh runs_root/<dataset>/<category>/<timestamp>-<suffix> folder, created by this call and no other."""
    parent = Path(runs_root) / str(dataset) / str(category)
    _make_parent(parent, runs_root)
    while True:
        folder = parent / f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def claim_run_dir(folder: Path, runs_root: Any) -> bool:
    """Make an explicit `run_dir=` folder for a new run; returns whether this call created it. A folder that
    already holds a run is refused: only `resume=true` continues one."""
    if holds_run(folder):
        raise ConfigError(f"run_dir={folder} already holds a run; continue it with `prn train resume={folder}` "
                          "or choose a new run_dir (or none: a fresh folder under runs_root is made)")
    _make_parent(folder.parent, runs_root)
    try:
        folder.mkdir()
        return True
    except FileExistsError:
        if not folder.is_dir():
            raise ConfigError(f"run_dir={folder} is not allowed: it is a file, not a directory") from None
        return False


def resume_target(cfg: DictConfig) -> Path | None:
    """The run directory to resume: `resume=RUN`, or `resume=true` with `run_dir=RUN`; None for a new run."""
    resume = cfg.get("resume")
    if resume is None or resume is False:
        return None
    if resume is True:
        if not cfg.get("run_dir"):
            raise ConfigError("resume=true needs run_dir=<the run's directory> (or write resume=<the run's directory>)")
        return Path(cfg.run_dir)
    return Path(str(resume))


def stored_config(run_dir: Path) -> DictConfig:
    """The config a run was started with (its config.yaml), or a ConfigError saying what is missing."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it holds no run ({path} and checkpoints/last.ckpt do not exist); "
                          "pass resume=<the directory of an earlier run>")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # a YAML error of any kind: the file is not what `prn train` wrote
        raise ConfigError(f"cannot resume {run_dir}: {path} is not a readable config ({err})") from err
    OmegaConf.set_struct(cfg, True)
    return cfg


def _is_safe(key: str) -> bool:
    return any(key == s.rstrip(".") or (s.endswith(".") and key.startswith(s)) for s in RESUME_SAFE_KEYS)


def resume_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The config that continues `run_dir`: its own config.yaml with the overrides of earlier resumes and the safe
    `overrides` applied. When `overrides` hold more than safe keys (e.g. a sweep replaying its whole command line),
    the config they compose must equal the run's on every key that can change the result."""
    stored = stored_config(run_dir)
    earlier = _earlier_overrides(run_dir)
    wanted = [o for o in overrides if o.split("=", 1)[0] not in ("resume", "run_dir")]
    fixed = [f"run_dir={run_dir}", "resume=true"]
    if all(_is_safe(o.split("=", 1)[0]) and not o.startswith("experiment=") for o in wanted):
        cfg = apply_overrides(stored, [*earlier, *wanted, *fixed])
    else:
        composed = load_config([*wanted, f"run_dir={run_dir}"])
        check_resumable(stored, composed)
        explicit = [o for o in wanted if "." in o.split("=", 1)[0] and _is_safe(o.split("=", 1)[0])]
        cfg = apply_overrides(composed, [*earlier, *explicit, *fixed])
    check_resumable(stored, cfg)
    return cfg


def check_resumable(stored: DictConfig, cfg: DictConfig) -> None:
    """A ConfigError listing every key of `cfg` that differs from the run's `stored` config and may change the
    result (the safe ones: RESUME_SAFE_KEYS)."""
    changed = differing_keys(stored, cfg, RESUME_SAFE_KEYS)
    if changed:
        a, b = _flatten(stored), _flatten(cfg)
        listing = ", ".join(f"{k} ({a.get(k, '<absent>')} -> {b.get(k, '<absent>')})" for k in changed)
        raise ConfigError(f"resume would change what the run computes: {listing}; a resumed run keeps its own "
                          f"config.yaml and may only change {', '.join(s.rstrip('.') for s in RESUME_SAFE_KEYS)}. "
                          "Start a new run for other values")


def _earlier_overrides(run_dir: Path) -> list[str]:
    log = run_dir / RESUME_LOG
    return log.read_text(encoding="utf-8").split() if log.is_file() else []


def record_resume(run_dir: Path, cfg: DictConfig) -> None:
    """Append the run-length overrides this resume changed to RUN/resume_overrides.txt (config.yaml stays as it
    was), so the next resume continues with them (e.g. a run extended with trainer.max_epochs)."""
    before = _flatten(apply_overrides(stored_config(run_dir), _earlier_overrides(run_dir)))
    after = _flatten(cfg)
    changed = [k for k in ("trainer.max_epochs", "trainer.max_steps") if before.get(k) != after.get(k)]
    if changed:
        with (run_dir / RESUME_LOG).open("a", encoding="utf-8") as log:
            log.write(" ".join(f"{k}={after[k]}" for k in changed) + "\n")


def _extends(run_dir: Path, cfg: DictConfig) -> bool:
    """Whether `cfg` runs longer than the run's config with the earlier resumes' overrides."""
    before = _flatten(apply_overrides(stored_config(run_dir), _earlier_overrides(run_dir)))
    after = _flatten(cfg)
    return any(before.get(k) != after.get(k) for k in ("trainer.max_epochs", "trainer.max_steps"))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_orphaned_partials(run_dir: Path) -> list[Path]:
    """Delete the `.NAME.PID.tmp` files that an atomic write (a checkpoint, config.yaml) leaves when its process is
    killed mid-write (SIGKILL skips the cleanup); files of a process still alive are kept. Returns what was removed."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for partial in folder.glob(".*.tmp") if folder.is_dir() else ():
            pid = partial.name[:-len(".tmp")].rpartition(".")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                partial.unlink(missing_ok=True)
                removed.append(partial)
    return removed


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to continue from: the newer of checkpoints/last.ckpt and best.ckpt (a kill between the two
    writes of an epoch's end leaves best.ckpt one epoch ahead), or None before the first checkpoint."""
    found = [p for p in (run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "best.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


class CreatedFiles:
    """What a run added to its directory, to remove it again when the run fails before writing a checkpoint."""

    def __init__(self, run_dir: Path, created_dir: bool) -> None:
        self.run_dir, self.created_dir = run_dir, created_dir
        self.before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() and not created_dir else set()

    def remove_unless_checkpointed(self) -> bool:
        """Delete what the run created unless a checkpoint exists; returns whether anything was removed."""
        if not self.run_dir.is_dir() or any(self.run_dir.glob("checkpoints/*.ckpt")):
            return False
        if self.created_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return True
        for entry in self.run_dir.iterdir():
            if entry.name not in self.before:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        return True


@dataclass
class OpenedRun:
    """The run a `prn train` works on: its config (run_dir set), directory, and the checkpoint to continue from."""

    cfg: DictConfig
    run_dir: Path
    resume_from: Path | None
    created: CreatedFiles | None  # what to remove if the run fails before its first checkpoint (new runs, rank 0)


def _with_run_dir(cfg: DictConfig, run_dir: Path, resume: bool) -> DictConfig:
    cfg = cfg.copy()
    cfg.run_dir = str(run_dir)
    cfg.resume = resume
    return cfg


def open_run(cfg: DictConfig, rank: int, inherited: str | None = None) -> OpenedRun:
    """Resume the run `cfg.resume` names, or make a new run's directory and write its config.yaml (rank 0).

    `inherited`: the directory rank 0 made, for ranks that Lightning launched later (DDP); other ranks > 0 use
    `run_dir` as given (a fixed run_dir= on SLURM)."""
    target = resume_target(cfg)
    if target is not None:
        stored = stored_config(target)
        check_resumable(stored, cfg)
        resumed = _with_run_dir(cfg, target, True)
        if (target / "metrics.json").is_file() and not _extends(target, resumed):
            raise ConfigError(f"run {target} has finished (its metrics.json exists); to train it longer pass a larger "
                              "trainer.max_epochs, or start a new run")
        if rank == 0:
            record_resume(target, resumed)
            remove_orphaned_partials(target)
        ckpt = Path(cfg.ckpt) if cfg.get("ckpt") else newest_checkpoint(target)
        return OpenedRun(resumed, target, ckpt, None)
    if inherited or rank != 0:
        run_dir = Path(inherited or cfg.run_dir)
        return OpenedRun(_with_run_dir(cfg, run_dir, False), run_dir, None, None)
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
        created = claim_run_dir(run_dir, cfg.runs_root)
    else:
        problem = runs_root_problem(cfg.runs_root)
        if problem:
            raise ConfigError(problem)
        run_dir, created = new_run_dir(cfg.runs_root, cfg.data.dataset, cfg.data.category), True
    tracker = CreatedFiles(run_dir, created)
    cfg = _with_run_dir(cfg, run_dir, False)
    try:
        save_config(cfg, run_dir / CONFIG_FILE, exclusive=True)
    except FileExistsError:
        raise ConfigError(f"run_dir={run_dir} already holds a run (another run started there just now); choose "
                          "another run_dir") from None
    return OpenedRun(cfg, run_dir, None, tracker)


# What a trained run fixed about its data: evaluating a checkpoint uses the run's values. The first group may differ
# when the user says so (evaluate_on_other_data=true); the image size and resize policy are the network's own.
OTHER_DATA_KEYS = ("data.dataset", "data.category", "data.num_seen_anomalies", "data.num_val_anomalies", "seed")
NETWORK_DATA_KEYS = ("data.image_size", "data.resize")


def check_evaluation_data(run_cfg: DictConfig, cfg: DictConfig, other_data: bool, ckpt: Path) -> None:
    """A ConfigError when `cfg` evaluates a checkpoint on data its run did not use: another image size or resize
    policy always; another dataset, category, seed or number of seen anomalies unless `other_data`."""
    run, now = _flatten(run_cfg), _flatten(cfg)
    fixed = [k for k in NETWORK_DATA_KEYS if k in run and k in now and run[k] != now[k]]
    if fixed:
        raise ConfigError(f"checkpoint {ckpt} was trained with " + ", ".join(f"{k}={run[k]}" for k in fixed)
                          + "; its network takes exactly that input: remove "
                          + ", ".join(f"{k}={now[k]}" for k in fixed) + " from the command line")
    changed = [k for k in OTHER_DATA_KEYS if k in run and k in now and run[k] != now[k]]
    if changed and not other_data:
        raise ConfigError(f"checkpoint {ckpt} belongs to a run on other data: "
                          + ", ".join(f"{k} ({run[k]} -> {now[k]})" for k in changed)
                          + "; its test set would not exclude what the model trained on. To evaluate on other "
                          "data anyway add evaluate_on_other_data=true (the run's seen anomalies stay out of the "
                          "test set when they are in it)")


def train_config(overrides: list[str]) -> DictConfig:
    """The config `prn train OVERRIDES` runs: composed from experiments/, or, with resume=RUN (resume=true
    run_dir=RUN), the run's own config plus the overrides that cannot change its result (`resume_config`)."""
    cfg = load_config(overrides)
    target = resume_target(cfg)
    return resume_config(target, overrides) if target is not None else cfg
