"""Config composition: experiments/default.yaml + one file per group + an experiment file + dotlist overrides.

Every group has a `base.yaml` holding all of its keys with their documented defaults; the selected file of the
group (e.g. `data/mvtec.yaml`) may only override keys that exist there. The result is in struct mode, so a typo
anywhere (file or command line) fails with the key's name and the closest valid keys.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from prn_lightning.config_checks import check_config
from prn_lightning.errors import ConfigError

GROUPS = ("data", "model", "trainer", "logger")


def experiments_dir() -> Path:
    """The folder with the YAML configs: $PRN_EXPERIMENTS_DIR, else `experiments/` of the checkout this package runs
    from (an editable install), else `experiments/` in the working directory (an installed package run from a
    clone); a ConfigError saying where it looked when none has default.yaml."""
    env = os.environ.get("PRN_EXPERIMENTS_DIR")
    if env:
        if not (Path(env) / "default.yaml").is_file():
            raise ConfigError(f"PRN_EXPERIMENTS_DIR={env} holds no default.yaml; point it at the experiments/ folder "
                              "of prn-lightning")
        return Path(env)
    candidates = [Path(__file__).resolve().parents[2] / "experiments", Path.cwd() / "experiments"]
    for candidate in candidates:
        if (candidate / "default.yaml").is_file():
            return candidate
    raise ConfigError(f"no experiments/ folder with default.yaml in {candidates[1].parent} (the configs are not part "
                      "of the installed package): run prn from a clone of prn-lightning, or set "
                      "PRN_EXPERIMENTS_DIR=<clone>/experiments")


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"config file {path} does not exist; choose one of: {', '.join(choices) or '(none)'}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping")
    return cfg


def _flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        full = f"{prefix}{key}"
        keys.append(full)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            keys.extend(_flat_keys(value, full + "."))
    return keys


def _unknown_key_error(base: DictConfig, key: str, source: str) -> ConfigError:
    valid = _flat_keys(base)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # compare the last component too: `data.numseen` -> `data.num_seen_anomalies`
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in valid if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.6)][:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _merge_checked(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    """Merge `update` onto struct-mode `base`, turning unknown keys into a ConfigError naming the key."""
    OmegaConf.set_struct(base, True)
    for key in _flat_keys(update):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if node is None or (isinstance(node, DictConfig) and leaf not in node):
            raise _unknown_key_error(base, key, source)
    try:
        return OmegaConf.merge(base, update)
    except (ConfigAttributeError, ConfigKeyError) as err:
        raise ConfigError(f"{source}: {err}") from err


def _split_overrides(overrides: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Separate group choices (`data=mvtec`, `experiment=x`) from value overrides (`data.category=carpet`)."""
    choices, values = {}, []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. model.prototype_ratio=0.2)")
        key, value = item.split("=", 1)
        if key in GROUPS or key == "experiment":
            choices[key] = value
        else:
            values.append(item)
    return choices, values


def load_config(overrides: Iterable[str] = (), root: Path | None = None) -> DictConfig:
    """Compose the run config from `experiments/` and dotlist overrides; returns a struct-mode DictConfig whose
    values passed `check_config` (types and ranges)."""
    root = Path(root) if root else experiments_dir()
    choices, values = _split_overrides(list(overrides))
    default = _load_yaml(root / "default.yaml")
    selected = dict(default.get("defaults", {}))
    experiment_name = choices.get("experiment", default.get("experiment"))
    experiment = None
    if experiment_name:
        experiment = _load_yaml(root / "experiment" / f"{experiment_name}.yaml")
        selected.update(experiment.get("defaults", {}) or {})
    selected.update({k: v for k, v in choices.items() if k in GROUPS})

    cfg = OmegaConf.create({k: v for k, v in default.items() if k != "defaults"})
    for group in GROUPS:
        cfg = OmegaConf.merge(cfg, _group_config(root, group, selected[group]))
    cfg.experiment = experiment_name
    OmegaConf.set_struct(cfg, True)
    if experiment is not None:
        body = OmegaConf.create({k: v for k, v in experiment.items() if k != "defaults"})
        cfg = _merge_checked(cfg, body, f"{root / 'experiment' / experiment_name}.yaml")
    return apply_overrides(cfg, values, root)


def _group_config(root: Path, group: str, name: str) -> DictConfig:
    group_cfg = _merge_checked(_load_yaml(root / group / "base.yaml"), _load_yaml(root / group / f"{name}.yaml"),
                               f"{root / group / name}.yaml")
    OmegaConf.set_struct(group_cfg, False)
    return group_cfg


def apply_overrides(cfg: DictConfig, overrides: Iterable[str], root: Path | None = None) -> DictConfig:
    """Overrides onto a composed `cfg`: group choices (`logger=none`) replace that group with its file, dotlist
    values (`model.prototype_ratio=0.2`) set keys; unknown keys and unusable values fail naming the key."""
    root = Path(root) if root else experiments_dir()
    choices, values = _split_overrides(list(overrides))
    if "experiment" in choices:
        raise ConfigError("experiment=NAME cannot be applied to an existing run's config; pass its keys instead")
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    for group, name in choices.items():
        cfg[group] = _group_config(root, group, name)[group]
    OmegaConf.set_struct(cfg, True)
    if values:
        try:
            dotlist = OmegaConf.from_dotlist(values)
        except Exception as err:  # omegaconf raises several types for malformed dotlists
            raise ConfigError(f"cannot parse overrides {values}: {err}") from err
        cfg = _merge_checked(cfg, dotlist, "the command line")
    OmegaConf.set_struct(cfg, True)
    check_config(cfg)
    return cfg
