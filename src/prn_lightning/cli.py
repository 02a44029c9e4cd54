"""The `prn` command: train, test, predict, export, sweep, table, dashboard, download, generate-synthetic.

Config-driven commands take omegaconf dotlist overrides, e.g. `prn train data=mvtec data.category=carpet
model.prototype_ratio=0.2`; group files are chosen with `data=NAME`, `model=NAME`, `trainer=NAME`, `logger=NAME`,
`experiment=NAME` (files under experiments/).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")



def _train(args: argparse.Namespace) -> None:
    from prn_lightning.workflows.run_dir import train_config
    from prn_lightning.workflows.train import run_train

    run_dir = run_train(train_config(args.overrides))
    print(f"run directory: {run_dir}")


def _test(args: argparse.Namespace) -> None:
    from prn_lightning.config import load_config
    from prn_lightning.workflows.train import run_test

    run_test(load_config(args.overrides), args.overrides)


def _predict(args: argparse.Namespace) -> None:
    from prn_lightning.config import load_config
    from prn_lightning.errors import ConfigError
    from prn_lightning.workflows.predict import run_predict

    aliases = {"input": "predict.input", "out": "predict.out"}
    # model=PATH names an exported model here, not the `model` config group
    models = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model=")]
    overrides = [aliases.get(o.split("=", 1)[0], o.split("=", 1)[0]) + "=" + o.split("=", 1)[1] if "=" in o else o
                 for o in args.overrides if not o.startswith("model=")]
    shaping = [o for o in overrides if o.startswith(("data.", "data=")) and not o.startswith("data.eval_batch_size=")]
    if shaping:  # the image size and resize policy are the model's own; nothing else of `data` applies
        raise ConfigError(f"prn predict takes the data values from the model's run; remove {' '.join(shaping)} "
                          "(only data.eval_batch_size applies)")
    cfg = load_config(overrides)
    if len([m for m in [cfg.ckpt, *models] if m]) != 1 or not cfg.predict.input or not cfg.predict.out:
        raise ConfigError("prn predict needs one of ckpt=PATH or model=DIR/model.onnx|model.xml|model.pt, "
                          "and input=IMAGE_OR_DIR out=DIR")
    csv_path = run_predict(Path(cfg.ckpt or models[0]), Path(cfg.predict.input), Path(cfg.predict.out),
                           batch_size=int(cfg.data.eval_batch_size),
                           openvino_precision=str(cfg.predict.openvino_precision))
    print(f"scores: {csv_path}")


def _export(args: argparse.Namespace) -> None:
    from prn_lightning.deploy.export import export_checkpoint
    from prn_lightning.errors import ConfigError

    values = dict(o.split("=", 1) for o in args.overrides if "=" in o)
    unknown = sorted(set(values) - {"ckpt", "format", "out"}) + [o for o in args.overrides if "=" not in o]
    if unknown or not all(values.get(key) for key in ("ckpt", "format", "out")):
        hint = f" (not understood: {' '.join(unknown)})" if unknown else ""
        raise ConfigError(f"prn export needs ckpt=PATH format=onnx|openvino|torchscript out=DIR{hint}")
    path = export_checkpoint(Path(values["ckpt"]), values["format"], Path(values["out"]))
    print(f"model: {path}  (with {path.parent / 'metadata.json'})")


def _sweep(args: argparse.Namespace) -> None:
    from prn_lightning.workflows.sweep import export_wandb_sweep, run_sweep

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    if args.wandb_export:
        path = export_wandb_sweep(Path(args.sweep_file), args.overrides, seeds, Path(args.wandb_export))
        print(f"W&B sweep file: {path}  (then: wandb sweep {path}; wandb agent ENTITY/PROJECT/SWEEP_ID)")
        return
    run_sweep(Path(args.sweep_file), args.overrides, seeds=seeds,
              runs_root=Path(args.runs_root) if args.runs_root else None)


def _table(args: argparse.Namespace) -> None:
    from prn_lightning.workflows.table import build_table

    build_table(Path(args.runs_dir), logger=args.logger)


def _dashboard(args: argparse.Namespace) -> None:
    from prn_lightning.workflows.dashboard import build_dashboard

    build_dashboard(args.target)


def _download(args: argparse.Namespace) -> None:
    from prn_lightning.data.sources.download import download_dataset

    path = download_dataset(args.dataset, Path(args.data_dir), url=args.url, sha256=args.sha256)
    print(f"{args.dataset} is ready at {path}")


def _generate_synthetic(args: argparse.Namespace) -> None:
    from prn_lightning.data.sources.synthetic import generate_synthetic

    counts = generate_synthetic(Path(args.root), seed=args.seed)
    for category, per_split in counts.items():
        print(f"{category}: {per_split}")
    print(f"synthetic dataset written to {args.root}")


def _make_train(args: argparse.Namespace) -> None:
    from prn_lightning.workflows.make_train import run_make_train

    result = run_make_train(args.dataset, args.category, args.overrides, sweep=args.sweep)
    print(f"{'sweep' if args.sweep else 'run directory'}: {result}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prn", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error, anywhere on the line (or PRN_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    def config_command(name: str, handler, help_text: str) -> None:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("overrides", nargs="*", help="key=value dotlist overrides")
        sub.set_defaults(handler=handler)

    config_command("train", _train, "train PRN, then test the validation-selected checkpoint")
    config_command("test", _test, "evaluate ckpt=PATH with the config it was trained with")
    config_command("predict", _predict, "anomaly maps and scores: ckpt=PATH | model=DIR/model.onnx|.xml|.pt, "
                   "input=IMAGE_OR_DIR out=DIR")
    config_command("export", _export, "one model file for deployment: ckpt=PATH format=onnx|openvino|torchscript "
                   "out=DIR")

    sweep = commands.add_parser("sweep", help="run a sweep grid locally (restartable)")
    sweep.add_argument("sweep_file", help="e.g. experiments/sweeps/prototype_ratio.yaml")
    sweep.add_argument("overrides", nargs="*", help="fixed overrides for every run, e.g. data=mvtec")
    sweep.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2")
    sweep.add_argument("--runs-root", default=None, help="default: the config's runs_root")
    sweep.add_argument("--wandb-export", default=None, metavar="OUT.yaml",
                       help="write a W&B sweep file with these overrides and seeds instead of running locally")
    sweep.set_defaults(handler=_sweep)

    table = commands.add_parser("table", help="aggregate finished runs into paper-style tables")
    table.add_argument("runs_dir")
    table.add_argument("--logger", choices=("wandb", "none"), default="wandb", help="also log the table to W&B")
    table.set_defaults(handler=_table)

    dashboard = commands.add_parser("dashboard", help="W&B workspace (online) or PNG + HTML dashboard (offline)")
    dashboard.add_argument("target", help="a runs directory, or ENTITY/PROJECT on W&B")
    dashboard.set_defaults(handler=_dashboard)

    make_train = commands.add_parser("make-train", help="what `make train` / `make sweep` run")
    make_train.add_argument("--sweep", default=None, help="sweep name under experiments/sweeps/")
    make_train.add_argument("dataset", nargs="?", default="", help="mvtec, btad, dagm, ksdd2, folder, synthetic")
    make_train.add_argument("category", nargs="?", default="")
    make_train.add_argument("overrides", nargs="*", help="key=value dotlist overrides")
    make_train.set_defaults(handler=_make_train)

    download = commands.add_parser("download", help="download and verify a public dataset")
    download.add_argument("dataset", help="mvtec, btad, dagm, ksdd2 or dtd")
    download.add_argument("--data-dir", default="data")
    download.add_argument("--url", default=None, help="override the archive URL")
    download.add_argument("--sha256", default=None, help="override the expected checksum")
    download.set_defaults(handler=_download)

    synthetic = commands.add_parser("generate-synthetic", help="write the embedded synthetic dataset")
    synthetic.add_argument("--root", default="data/synthetic")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(handler=_generate_synthetic)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a mistake the user can fix ends with its message (one line per problem) and exit code 2,
    without a traceback unless --debug or PRN_DEBUG asks for it."""
    from prn_lightning.errors import PRNUserError
    from prn_lightning.workflows.sweep import SweepRunsFailed

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PRN_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])  # `prn train --debug ...` works too
    try:
        args.handler(args)
    except (PRNUserError, FileNotFoundError, SweepRunsFailed) as err:
        if debug:
            raise
        print("\n".join(f"error: {line}" for line in str(err).splitlines() or [type(err).__name__]),
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
