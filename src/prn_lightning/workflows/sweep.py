"""Run a W&B sweep file's grid locally: every combination x seed, one `prn train` subprocess at a time, restartable.

The same YAML drives `wandb sweep` + `wandb agent` across machines: the agent runs `prn train key=value ...` from
W&B's `${args_no_hyphens}`, and this runner builds the very same `key=value` strings (`format_override`). Each local
run gets a fixed directory, runs_root/sweeps/<sweep>/<category>/<combination>/seed<s>, so a second invocation skips
finished runs (metrics.json present) and resumes interrupted ones exactly as `prn train resume=RUN` does (from
their last checkpoint, with their own config.yaml and seen anomalies; a run killed before its first checkpoint starts
over in its directory). Every run is a
subprocess: memory is returned after each run, and DDP (which re-launches its own command) stays self-contained.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prn_lightning.config import load_config
from prn_lightning.errors import PRNUserError

SEED_KEY = "seed"
RESERVED_KEYS = ("run_dir", "resume", "runs_root")  # set by the runner for every run


class SweepFileError(PRNUserError):
    """A sweep file or sweep override that cannot be run; the message names the file or key and the fix."""


class SweepRunsFailed(RuntimeError):
    """Some runs of a sweep failed; the others finished. `run_dirs` lists every run directory of the sweep."""

    def __init__(self, message: str, run_dirs: list[Path]) -> None:
        super().__init__(message)
        self.run_dirs = run_dirs


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file reduced to what both runners share: the grid axes, constant parameters and seeds."""

    name: str
    path: Path
    swept: dict[str, list[Any]]  # grid axes in file order (the seed axis excluded)
    constants: list[str]  # `{value: x}` parameters, as overrides
    seeds: list[int]  # values of a `seed` parameter in the file, else []

    def combinations(self) -> list[dict[str, Any]]:
        """The cartesian product of the axes, first axis slowest (W&B's grid order)."""
        keys = list(self.swept)
        return [dict(zip(keys, values)) for values in itertools.product(*self.swept.values())]


def format_override(key: str, value: Any) -> str:
    """`key=value` exactly as W&B's agent renders `${args_no_hyphens}` (`True`, `0.05`), so both runners agree."""
    return f"{key}={value}"


def combination_slug(combination: dict[str, Any]) -> str:
    """A directory name for one combination, e.g. `prototype_ratio-0.05` or `use_msa-false_use_fusion-true`."""
    leaves = [key.rsplit(".", 1)[-1] for key in combination]
    names = leaves if len(set(leaves)) == len(leaves) else list(combination)
    parts = [f"{name}-{str(value).lower() if isinstance(value, bool) else value}"
             for name, value in zip(names, combination.values())]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)) or "default"


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a W&B sweep YAML (method grid; every parameter has `values` or `value`)."""
    path = Path(path)
    if not path.is_file():
        choices = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f"; sweeps in {path.parent}: {', '.join(choices)}" if choices else ""
        raise SweepFileError(f"sweep file {path} does not exist{hint}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepFileError(f"sweep file {path} is not valid YAML: {err}") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise SweepFileError(f"sweep file {path} needs a `parameters:` mapping (key: {{values: [...]}})")
    if spec.get("method") != "grid":
        raise SweepFileError(f"sweep file {path}: method is {spec.get('method')!r}; "
                             "the local runner runs `method: grid`")
    swept: dict[str, list[Any]] = {}
    constants: list[str] = []
    seeds: list[int] = []
    for key, param in spec["parameters"].items():
        if key in RESERVED_KEYS:
            raise SweepFileError(f"sweep file {path}: parameter {key!r} is set by the runner; remove it")
        if isinstance(param, dict) and isinstance(param.get("values"), list) and param["values"]:
            values = param["values"]
        elif isinstance(param, dict) and "value" in param:
            values = None
        else:
            raise SweepFileError(f"sweep file {path}: parameter {key!r} needs `values: [...]` (non-empty) "
                                 "or `value: x`")
        for value in values if values is not None else [param["value"]]:
            if not isinstance(value, (bool, int, float, str)):
                raise SweepFileError(f"sweep file {path}: parameter {key!r} has value {value!r}; use numbers, "
                                     "booleans or strings (write 'null' for None)")
        if key == SEED_KEY:
            seeds = [int(v) for v in (values if values is not None else [param["value"]])]
        elif values is None:
            constants.append(format_override(key, param["value"]))
        else:
            swept[key] = values
    return SweepSpec(str(spec.get("name") or path.stem), path, swept, constants, seeds)


def _check_overrides(spec: SweepSpec, overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in spec.swept:
            raise SweepFileError(f"override {item!r} sets {key}, which {spec.path} sweeps; remove it from the command")
        if key in RESERVED_KEYS or key == SEED_KEY:
            raise SweepFileError(f"override {item!r}: the runner sets {key} for every run "
                                 "(seeds: --seeds 0,1,2; directory: --runs-root)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _record_sweep(sweep_dir: Path, spec: SweepSpec, seeds: list[int], overrides: list[str],
                  runs: list[dict[str, Any]]) -> None:
    """sweep.json: what `prn table` groups by. Runs of other categories (other invocations) are kept."""
    path = sweep_dir / "sweep.json"
    previous = _read_json(path)
    current = {run["run_dir"] for run in runs}
    kept = [run for run in previous.get("runs", []) if run.get("run_dir") not in current]
    categories = sorted({*previous.get("categories", []), *(run["category"] for run in runs)})
    _write_json(path, {
        "name": spec.name,
        "sweep_file": str(spec.path),
        "parameters": spec.swept,
        "seeds": sorted({*previous.get("seeds", []), *seeds}),
        "overrides": spec.constants + overrides,
        "categories": categories,
        "runs": kept + runs,
    })


def _stream(command: list[str], log_path: Path) -> int:
    """Run `command`, echoing its output live and appending it to `log_path`; returns the exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              text=True, errors="replace", bufsize=1) as process:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
            return process.wait()


@dataclass(frozen=True)
class PlannedRun:
    """One combination x seed of a sweep: its overrides and its fixed run directory."""

    category: str
    params: dict[str, Any]
    seed: int
    run_dir: Path
    overrides: list[str]  # every override of the run except seed and run_dir: constants, fixed, combination

    def command(self) -> list[str]:
        """The subprocess that trains this run (resuming when an earlier attempt started it: its config.yaml)."""
        command = [sys.executable, "-m", "prn_lightning.cli", "train", *self.overrides,
                   f"seed={self.seed}", f"run_dir={self.run_dir}"]
        if (self.run_dir / "config.yaml").is_file():
            command.append("resume=true")
        return command

    def record(self, status: str) -> dict[str, Any]:
        return {"category": self.category, "params": self.params, "seed": self.seed, "run_dir": str(self.run_dir),
                "status": status}


def plan_sweep(
    spec: SweepSpec, overrides: list[str], seeds: list[int] | None, runs_root: str | Path | None
) -> tuple[Path, list[int], list[PlannedRun]]:
    """The sweep directory, the seeds and every run, each combination checked against the config first."""
    _check_overrides(spec, overrides)
    base = spec.constants + overrides
    base_cfg = load_config(base)  # fails on a typo before anything runs
    seeds = list(seeds) if seeds else spec.seeds or [int(base_cfg.seed)]
    root = Path(runs_root) if runs_root is not None else Path(base_cfg.runs_root)
    sweep_dir = root / "sweeps" / spec.name
    plan = []
    for combination in spec.combinations():
        combo = [format_override(k, v) for k, v in combination.items()]
        category = str(load_config(base + combo).data.category)
        for seed in seeds:
            run_dir = sweep_dir / category / combination_slug(combination) / f"seed{seed}"
            plan.append(PlannedRun(category, combination, seed, run_dir, base + combo))
    return sweep_dir, seeds, plan


def run_sweep(
    sweep_file: str | Path,
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
    runs_root: str | Path | None = None,
) -> list[Path]:
    """Run every combination x seed of `sweep_file` in turn; returns the run directories (finished or skipped).

    `overrides` apply to every run (e.g. `experiment=mvtec_gpu data.category=carpet`). Seeds come from `seeds`,
    else from a `seed` parameter in the file, else the config's `seed`. Runs whose directory has metrics.json are
    skipped; an interrupted run restarts with `resume=true`. A failed run does not stop the sweep: the failures are
    raised together at the end (`SweepRunsFailed`).
    """
    spec = load_sweep(sweep_file)
    overrides = list(overrides or [])
    sweep_dir, seeds, plan = plan_sweep(spec, overrides, seeds, runs_root)
    records = [run.record("pending") for run in plan]
    _record_sweep(sweep_dir, spec, seeds, overrides, records)

    failed = []
    for number, (run, record) in enumerate(zip(plan, records), start=1):
        label = " ".join([format_override(k, v) for k, v in run.params.items()] + [f"seed={run.seed}"])
        prefix = f"[sweep {spec.name}] {number}/{len(plan)} {run.category}: {label}"
        if (run.run_dir / "metrics.json").is_file():
            print(f"{prefix}: finished earlier, skipped ({run.run_dir})", flush=True)
            record["status"] = "skipped"
            continue
        command = run.command()
        print(f"{prefix}: {'resuming' if command[-1] == 'resume=true' else 'starting'} in {run.run_dir}", flush=True)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        code = _stream(command, run.run_dir / "train.log")
        finished = code == 0 and (run.run_dir / "metrics.json").is_file()
        record["status"] = "finished" if finished else f"failed (exit code {code})"
        if not finished:
            failed.append(f"{run.category}: {label} -> exit code {code}, log: {run.run_dir / 'train.log'}")
        _record_sweep(sweep_dir, spec, seeds, overrides, records)

    run_dirs = [run.run_dir for run in plan]
    if failed:
        raise SweepRunsFailed(f"{len(failed)} of {len(plan)} runs of sweep {spec.name} failed "
                              "(rerun the same command to retry them; finished runs are skipped):\n  "
                              + "\n  ".join(failed), run_dirs)
    print(f"[sweep {spec.name}] all {len(plan)} runs done; table: prn table {sweep_dir}", flush=True)
    return run_dirs


def export_wandb_sweep(
    sweep_file: str | Path, overrides: list[str] | None, seeds: list[int] | None, out_path: str | Path
) -> Path:
    """Write `sweep_file` for `wandb sweep` with the fixed overrides (and seeds) added as sweep parameters.

    `wandb sweep` takes no extra arguments, so `experiment=...`, `data.category=...` become `{value: ...}`
    parameters and seeds a `seed: {values: [...]}` axis; the agent then runs the same commands as `run_sweep`.
    """
    spec = load_sweep(sweep_file)
    overrides = list(overrides or [])
    _check_overrides(spec, overrides)
    load_config(spec.constants + overrides)
    config = yaml.safe_load(spec.path.read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        config["parameters"][key] = {"value": value}
    if seeds:
        config["parameters"][SEED_KEY] = {"values": [int(s) for s in seeds]}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return out_path
