"""Type and range of every config value, checked in one place before any work starts.

omegaconf keeps whatever a YAML file or the command line says (`model.prototype_ratio=abc` is a string), so without
this a wrong value surfaces as a traceback deep inside training, minutes or hours later. `check_config` walks the
rules below and raises one `ConfigError` whose lines each name the key, the value and what is allowed. The pieces
that code outside the config also needs (Perlin settings, the opacity range) are functions here, called by the
synthesis code, so each rule is written once.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from prn_lightning.errors import ConfigError

SIZE_MULTIPLE = 32  # the deepest stride of every supported backbone


@dataclass(frozen=True)
class Rule:
    """`accepts(value)` is True for an allowed value; `allowed` says what is allowed, for the error line."""

    accepts: Callable[[Any], bool]
    allowed: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    bounds = " and ".join(text for text in (f">= {low}" if low is not None else "",
                                            f"<= {high}" if high is not None else "") if text)
    return Rule(lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high),
                f"an integer {bounds}".rstrip())


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
    """A real number in the interval; `*_open` excludes that end."""
    def accepts(v: Any) -> bool:
        if not _is_number(v) or v != v:  # NaN
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    if low is not None and high is not None:
        interval = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        interval = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        interval = f"{'<' if high_open else '<='} {high}"
    else:
        interval = ""
    return Rule(accepts, f"a number {interval}".rstrip())


def choice(*options: Any) -> Rule:
    return Rule(lambda v: isinstance(v, (str, bool)) and v in options,
                "one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), f"null or {rule.allowed}")


def either(first: Rule, second: Rule) -> Rule:
    return Rule(lambda v: first.accepts(v) or second.accepts(v), f"{first.allowed}, or {second.allowed}")


def list_of(rule: Rule, length: int | None = None, min_length: int = 0) -> Rule:
    size = f"{length} values" if length is not None else f"at least {min_length} value(s)" if min_length else "values"
    return Rule(lambda v: isinstance(v, (list, tuple)) and (length is None or len(v) == length)
                and len(v) >= min_length and all(rule.accepts(x) for x in v),
                f"a list of {size}, each {rule.allowed}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PATH = TEXT
SIDE = Rule(lambda v: _is_int(v) and v >= SIZE_MULTIPLE and v % SIZE_MULTIPLE == 0,
            f"a multiple of {SIZE_MULTIPLE} (at least {SIZE_MULTIPLE})")
IMAGE_SIZE = Rule(lambda v: SIDE.accepts(v) or (isinstance(v, (list, tuple)) and len(v) == 2
                                                 and all(SIDE.accepts(s) for s in v)),
                  f"a multiple of {SIZE_MULTIPLE} (at least {SIZE_MULTIPLE}), or [height, width] of such, "
                  "e.g. 256 or [256, 512]")
FRACTION_OR_COUNT = either(number(0.0, 1.0, low_open=True), integer(1))
RESIZE_POLICIES = ("squash", "keep-aspect")  # data.resize: stretch to image_size, or scale the long side and pad
MSA_LOGIT_SCALES = ("token_dim", "sqrt_token_dim")  # model.msa_logit_scale: Q K^T / D or / sqrt(D)
DEFECT_AUGMENTATIONS = ("photometric", "geometric", "none")  # data.seen_augmentation, extended_defect_augmentation
SOURCE_AUGMENTATION_OPS = ("gamma", "brightness_contrast", "sharpness", "hue_saturation", "solarize", "posterize",
                           "invert", "autocontrast", "equalize", "rotate")  # DRAEM's augmenters for anomaly sources
GEOMETRIC_SOURCE_OPS = ("rotate",)  # the ones that move pixels: skipped when a source is recoloured in place

OPENVINO_PRECISIONS = ("f32", "bf16", "f16", "default")  # predict.openvino_precision: the CPU plugin's hint

RULES: dict[str, Rule] = {
    "seed": integer(0, 2**32 - 1),
    "runs_root": PATH,
    "run_dir": optional(PATH),
    "ckpt": optional(PATH),
    "resume": either(BOOL, Rule(lambda v: isinstance(v, str) and v != "", "a run directory")),
    "experiment": optional(TEXT),
    "evaluate_on_other_data": BOOL,
    "predict.input": optional(PATH),
    "predict.out": optional(PATH),
    "predict.openvino_precision": choice(*OPENVINO_PRECISIONS),
    # data
    "data.dataset": TEXT,
    "data.root": PATH,
    "data.category": Rule(lambda v: (isinstance(v, str) and v != "") or _is_int(v), "a category name"),
    "data.url": optional(TEXT),
    "data.sha256": optional(TEXT),
    "data.image_size": IMAGE_SIZE,
    "data.resize": choice(*RESIZE_POLICIES),
    "data.num_seen_anomalies": integer(0),
    "data.num_val_anomalies": integer(0),
    "data.val_fraction": number(0.0, 1.0, high_open=True),
    "data.val_synthetic_per_normal": integer(0),
    "data.anomaly_ratio": number(0.0, 1.0, low_open=True),
    "data.samples_per_epoch": optional(integer(1)),
    "data.generation.seen": BOOL,
    "data.generation.extended": BOOL,
    "data.generation.simulated": BOOL,
    "data.generation.seen_weight": number(0.0),
    "data.generation.extended_weight": number(0.0),
    "data.generation.simulated_weight": number(0.0),
    "data.beta": list_of(number(0.0, 1.0), length=2),
    "data.perlin.min_scale": integer(0, 10),
    "data.perlin.max_scale": integer(1, 11),
    "data.perlin.threshold": number(-1.0, 1.0, low_open=True, high_open=True),
    "data.perlin.min_threshold": optional(number(-1.0, 1.0, low_open=True, high_open=True)),
    "data.perlin.rotation": number(0.0, 180.0),
    "data.texture_dir": optional(PATH),
    "data.foreground": choice("auto", "texture", "object"),
    "data.seen_augmentation": choice(*DEFECT_AUGMENTATIONS),
    "data.extended_defect_augmentation": choice(*DEFECT_AUGMENTATIONS),
    "data.source_augmentation.ops": list_of(choice(*SOURCE_AUGMENTATION_OPS)),
    "data.source_augmentation.per_source": integer(0),
    "data.source_augmentation.in_place": number(0.0, 1.0),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.num_workers": integer(0),
    # model
    "model.backbone.name": TEXT,
    "model.backbone.weights": choice("bundled", "timm", "none"),
    "model.backbone.out_indices": list_of(integer(0), length=4),
    "model.prototype_ratio": number(0.0, 1.0, low_open=True),
    "model.kmeans_iterations": integer(1),
    "model.prototype_lookup": choice("torch", "faiss"),
    "model.prototype_leave_one_out": BOOL,
    "model.use_prototypes": BOOL,
    "model.use_fusion": BOOL,
    "model.use_msa": BOOL,
    "model.msa_blocks": integer(1),
    "model.msa_sizes": integer(1, 4),
    "model.msa_logit_scale": choice(*MSA_LOGIT_SCALES),
    "model.decoder_channels": list_of(integer(1), length=4),
    "model.loss.smooth_l1_weight": number(0.0),
    "model.loss.focal_weight": number(0.0),
    "model.loss.focal_alpha": number(0.0, 1.0),
    "model.loss.focal_gamma": number(0.0),
    "model.loss.dice_weight": number(0.0),
    "model.topk": integer(1),
    "model.map_smoothing_sigma": number(0.0),
    "model.optimizer.name": choice("adam", "adamw", "sgd"),
    "model.optimizer.lr": number(0.0, low_open=True),
    "model.optimizer.weight_decay": number(0.0),
    "model.optimizer.qkv_weight_decay": optional(number(0.0)),
    "model.scheduler.name": choice("none", "cosine", "step", "warmup_cosine"),
    "model.scheduler.step_size": integer(1),
    "model.scheduler.gamma": number(0.0, low_open=True),
    "model.scheduler.warmup_steps": integer(0),
    "model.scheduler.min_lr": number(0.0),
    "model.monitor": TEXT,
    # trainer
    "trainer.accelerator": TEXT,
    "trainer.devices": either(integer(-1), Rule(lambda v: isinstance(v, (str, list, tuple)) and v != "",
                                                "auto or a list of device ids")),
    "trainer.num_nodes": integer(1),
    "trainer.strategy": TEXT,
    "trainer.precision": Rule(lambda v: (isinstance(v, str) and v != "") or _is_int(v),
                              "a Lightning precision such as 32-true, bf16-mixed or 16-mixed"),
    "trainer.max_epochs": integer(1),
    "trainer.max_steps": integer(-1),
    "trainer.limit_train_batches": FRACTION_OR_COUNT,
    "trainer.limit_val_batches": FRACTION_OR_COUNT,
    "trainer.limit_test_batches": FRACTION_OR_COUNT,
    "trainer.check_val_every_n_epoch": integer(1),
    "trainer.log_every_n_steps": integer(1),
    "trainer.gradient_clip_val": optional(number(0.0)),
    "trainer.deterministic": either(BOOL, choice("warn")),
    "trainer.enable_progress_bar": BOOL,
    # logger
    "logger.name": choice("wandb", "none"),
    "logger.project": TEXT,
    "logger.entity": optional(TEXT),
    "logger.tags": list_of(Rule(lambda v: isinstance(v, (str, int, float)), "a string")),
    "logger.mode": choice("auto", "online", "offline"),
    "logger.num_map_panels": integer(0),
}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return str(value)


def _line(key: str, value: Any, allowed: str) -> str:
    return f"{key}={_show(value)} is not allowed: it must be {allowed}"


def _get(cfg: Any, key: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key in a DictConfig or nested mappings."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, (DictConfig, Mapping)) or part not in node:
            return False, None
        try:
            node = node[part]
        except Exception as err:  # a missing mandatory value or an interpolation that cannot resolve
            raise ConfigError(f"{key}: {err}") from err
    return True, _plain(node)


def image_size_hw(value: Any) -> tuple[int, int]:
    """(height, width) of a checked `data.image_size` (an int or [height, width])."""
    value = _plain(value)
    return (int(value), int(value)) if _is_int(value) else (int(value[0]), int(value[1]))


def check_perlin(min_scale: Any, max_scale: Any, threshold: Any, rotation: Any = 0.0,
                 min_threshold: Any = None) -> None:
    """data.perlin: integer scales 0 <= min_scale < max_scale, threshold in (-1, 1), rotation in [0, 180],
    min_threshold null or in (-1, threshold]."""
    problems = _perlin_problems(min_scale, max_scale, threshold, rotation, min_threshold)
    if problems:
        raise ConfigError("; ".join(problems))


def _perlin_problems(min_scale: Any, max_scale: Any, threshold: Any, rotation: Any,
                     min_threshold: Any = None) -> list[str]:
    problems = [_line(f"data.perlin.{k}", v, RULES[f"data.perlin.{k}"].allowed)
                for k, v in (("min_scale", min_scale), ("max_scale", max_scale), ("threshold", threshold),
                             ("rotation", rotation), ("min_threshold", min_threshold))
                if not RULES[f"data.perlin.{k}"].accepts(v)]
    if not problems and min_scale >= max_scale:
        problems.append(f"data.perlin.min_scale={min_scale}, data.perlin.max_scale={max_scale} are not allowed: "
                        "the Perlin grid scale is drawn in [min_scale, max_scale), so min_scale < max_scale")
    if not problems and min_threshold is not None and min_threshold > threshold:
        problems.append(f"data.perlin.min_threshold={min_threshold} is not allowed with data.perlin.threshold="
                        f"{threshold}: each mask's threshold is drawn in [min_threshold, threshold], so "
                        "min_threshold <= threshold (or null for the fixed threshold)")
    return problems


def check_beta(beta: Any) -> None:
    """data.beta: [low, high] with 0 <= low <= high <= 1 (the opacity range of blended anomalies)."""
    problems = _beta_problems(_plain(beta))
    if problems:
        raise ConfigError("; ".join(problems))


def _beta_problems(beta: Any) -> list[str]:
    if not RULES["data.beta"].accepts(beta) or beta[0] > beta[1]:
        return [_line("data.beta", beta, "[low, high] with 0 <= low <= high <= 1, e.g. [0.0, 0.8]")]
    return []


def check_source_augmentation(ops: Any, per_source: Any) -> None:
    """data.source_augmentation: known ops, each listed once, and 0 <= per_source <= len(ops)."""
    problems = _source_augmentation_problems(_plain(ops), per_source)
    if problems:
        raise ConfigError("; ".join(problems))


def _source_augmentation_problems(ops: Any, per_source: Any) -> list[str]:
    problems = [_line(f"data.source_augmentation.{k}", v, RULES[f"data.source_augmentation.{k}"].allowed)
                for k, v in (("ops", ops), ("per_source", per_source))
                if not RULES[f"data.source_augmentation.{k}"].accepts(v)]
    if not problems and len(set(ops)) != len(ops):
        problems.append(_line("data.source_augmentation.ops", ops, "a list naming each op once"))
    if not problems and per_source > len(ops):
        problems.append(f"data.source_augmentation.per_source={per_source} is not allowed: it must be at most the "
                        f"{len(ops)} ops listed in data.source_augmentation.ops")
    return problems


def _generation_problems(data: Any) -> list[str]:
    present, generation = _get(data, "generation")
    present_n, num_seen = _get(data, "num_seen_anomalies")
    if not present or not present_n or not isinstance(generation, Mapping):
        return []
    runnable = [name for name in ("seen", "extended", "simulated")
                if generation.get(name) is True and _is_number(generation.get(f"{name}_weight"))
                and generation[f"{name}_weight"] > 0 and (name == "simulated" or (_is_int(num_seen) and num_seen > 0))]
    if runnable:
        return []
    return ["data.generation enables no anomaly strategy that can run: PRN trains on anomalies; enable "
            "data.generation.simulated, or seen/extended with data.num_seen_anomalies > 0 "
            f"(now {_show(num_seen)}), each with a positive weight"]


def _cross_problems(cfg: Any) -> list[str]:
    """Rules between keys; each runs only when its keys passed their own rule."""
    problems: list[str] = []
    data_present, data = _get(cfg, "data")
    if data_present:
        values = {k: _get(cfg, f"data.perlin.{k}")
                  for k in ("min_scale", "max_scale", "threshold", "rotation", "min_threshold")}
        if all(present for present, _ in values.values()):
            args = [v for _, v in values.values()]
            if all(RULES[f"data.perlin.{k}"].accepts(v) for k, v in zip(values, args)):
                problems += _perlin_problems(*args)
        present, beta = _get(cfg, "data.beta")
        if present and RULES["data.beta"].accepts(beta):
            problems += _beta_problems(beta)
        problems += _generation_problems(data)
        ops_present, ops = _get(cfg, "data.source_augmentation.ops")
        count_present, per_source = _get(cfg, "data.source_augmentation.per_source")
        if (ops_present and count_present and RULES["data.source_augmentation.ops"].accepts(ops)
                and RULES["data.source_augmentation.per_source"].accepts(per_source)):
            problems += _source_augmentation_problems(ops, per_source)
            in_place_present, in_place = _get(cfg, "data.source_augmentation.in_place")
            if (in_place_present and RULES["data.source_augmentation.in_place"].accepts(in_place) and in_place > 0
                    and (per_source == 0 or all(op in GEOMETRIC_SOURCE_OPS for op in ops))):
                problems.append(f"data.source_augmentation.in_place={in_place} is not allowed with per_source="
                                f"{per_source} and ops {_plain(ops)}: recolouring in place needs per_source > 0 and "
                                "an op other than rotate; set in_place=0 or list photometric ops")
        ratio_present, ratio = _get(cfg, "data.anomaly_ratio")
        spe_present, per_epoch = _get(cfg, "data.samples_per_epoch")
        if ratio_present and spe_present and ratio == 1 and per_epoch is None:
            problems.append("data.samples_per_epoch=null is not allowed with data.anomaly_ratio=1: set "
                            "data.samples_per_epoch (the default derives it from the normal images of an epoch)")
    monitor_present, monitor = _get(cfg, "model.monitor")
    val_present, num_val = _get(cfg, "data.num_val_anomalies")
    if (monitor_present and val_present and isinstance(monitor, str) and monitor.startswith("val/real_")
            and RULES["data.num_val_anomalies"].accepts(num_val) and num_val == 0):
        problems.append(f"model.monitor={monitor} is not allowed with data.num_val_anomalies=0: the validation "
                        "split then holds no real anomaly; set data.num_val_anomalies (e.g. 5) or monitor "
                        "val/pixel_ap")
    size_present, size = _get(cfg, "data.image_size")
    topk_present, topk = _get(cfg, "model.topk")
    if size_present and topk_present and IMAGE_SIZE.accepts(size) and RULES["model.topk"].accepts(topk):
        height, width = image_size_hw(size)
        if topk > height * width:
            problems.append(f"model.topk={topk} is not allowed with data.image_size={_show(size)}: it must be at "
                            f"most the {height * width} pixels of the anomaly map")
    return problems


def runs_root_problem(runs_root: Any) -> str | None:
    """Why `runs_root` cannot hold run directories (not a folder, not writable), or None when it can.

    Nothing is created: the deepest existing folder on the way must be a folder that takes a (removed) probe file."""
    path = Path(str(runs_root)).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    fix = "set runs_root to a folder you can write to"
    if not probe.is_dir():
        where = "is" if probe == path else f"is below {probe}, which is"
        return f"runs_root={runs_root} is not allowed: it {where} not a directory; {fix}"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        where = "" if probe == path else f" ({probe}, where it would be created)"
        return f"runs_root={runs_root} is not allowed: cannot write into it{where}: {err.strerror or err}; {fix}"
    return None


def config_problems(cfg: Any, rules: Mapping[str, Rule] = RULES) -> list[str]:
    """Every problem of `cfg` as one line each (empty when the config can be used); keys absent from `cfg` are
    skipped, so a partial config (e.g. only the `data` section, prefixed) can be checked too."""
    problems = []
    for key, rule in rules.items():
        present, value = _get(cfg, key)
        if present and not rule.accepts(value):
            problems.append(_line(key, value, rule.allowed))
    return problems + _cross_problems(cfg)


def check_config(cfg: Any, *, writable_runs_root: bool = False) -> None:
    """Raise one `ConfigError` listing every config value that is of the wrong type or out of range.

    `writable_runs_root=True` also checks that `runs_root` is (or can become) a writable folder: for commands that
    create a run directory."""
    problems = config_problems(cfg)
    if writable_runs_root:
        present, runs_root = _get(cfg, "runs_root")
        if present and RULES["runs_root"].accepts(runs_root):
            problem = runs_root_problem(runs_root)
            if problem:
                problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems))


def check_data_config(data_cfg: Any) -> None:
    """`check_config` for the `data` section alone (what `PRNDataModule` receives)."""
    check_config({"data": data_cfg})
