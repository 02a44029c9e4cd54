"""Every import points down: a module may import its own layer or the layers below it, never above, never in a cycle.

The order, bottom to top (data flows the same way: images are read, datasets list them, synthesis makes anomalies,
the datamodule batches them, the model learns, metrics score it, loggers report, workflows and the CLI drive it):
"""
from __future__ import annotations

import ast
from pathlib import Path

import prn_lightning

LAYERS = (
    "prn_lightning.errors",        # the user-facing error types
    "prn_lightning.config_checks",  # type and range of every config value (used by every layer above)
    "prn_lightning.torch_threads",  # one intra-op thread for chains of small CPU ops (synthesis, metrics)
    "prn_lightning.imaging",       # reading images and masks, tensors
    "prn_lightning.data.sources",  # where images come from: one file per dataset, downloads, the registry
    "prn_lightning.synthesis",     # seen/extended/simulated anomaly synthesis
    "prn_lightning.data",          # the training-loop half: seen draw, datasets, samplers, datamodule
    "prn_lightning.metrics",       # exact I / P / O / A
    "prn_lightning.models",        # the pure network, then its LightningModule
    "prn_lightning.loggers",       # run artefacts, W&B, console, test reporting
    "prn_lightning.deploy",        # export and per-format inference
    "prn_lightning.config",        # composing a run config from experiments/
    "prn_lightning.workflows",     # train, test, predict, sweep, table, dashboard
    "prn_lightning.cli",           # the `prn` command
)
PACKAGE_ROOT = Path(prn_lightning.__file__).parent


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming `module`; the package root itself is at the bottom."""
    if module == "prn_lightning":
        return -1
    matches = [i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return max(matches, key=lambda i: len(LAYERS[i]))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every prn_lightning module `path` imports, at any depth of the file (function-level imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prn_lightning"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prn_lightning"):
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                candidate = f"{node.module}.{alias.name}"
                location = PACKAGE_ROOT.parent / Path(*candidate.split("."))
                found.add(candidate if location.with_suffix(".py").exists() or location.is_dir() else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{src} (layer {LAYERS[layer_of(src)]}) imports {dst} (layer {LAYERS[layer_of(dst)]})"
            for src, targets in graph.items() for dst in sorted(targets) if layer_of(dst) > layer_of(src)]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among modules (a package's __init__ importing its own submodules is not a cycle by itself)."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):  # a package re-exporting its submodules
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_points_up():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert import_cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = import_graph()
    graph["prn_lightning.synthesis.perlin"] = graph["prn_lightning.synthesis.perlin"] | {
        "prn_lightning.data.datamodule"}
    assert upward_imports(graph) == [
        "prn_lightning.synthesis.perlin (layer prn_lightning.synthesis) imports prn_lightning.data.datamodule "
        "(layer prn_lightning.data)"]
    graph = import_graph()
    graph["prn_lightning.data.sources.download_specs"] = graph["prn_lightning.data.sources.download_specs"] | {
        "prn_lightning.data.sources.mvtec"}
    assert import_cycles(graph) != []
