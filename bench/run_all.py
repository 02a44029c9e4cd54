"""`make bench`: run every benchmark section, each in its own process, and write bench/results/summary.md.

A section is one script, bench/bench_<name>.py, that writes bench/results/<name>.json; the rows it puts under
"rows" (see common.row) become its table in the summary, with our figure, the peer's or the baseline's, their
ratio, the target and whether it is met. SECTIONS fixes the order and arguments of the known ones; any other
bench_*.py found next to this file runs after them with no arguments, so adding a section is adding a file.
A failing section is reported and the others still run.

Usage: python bench/run_all.py [--only NAME ...] [--skip NAME ...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import HERE, REPO, RESULTS, machine

SECTIONS: list[tuple[str, list[str]]] = [  # (name, arguments): bench/bench_<name>.py -> results/<name>.json
    ("metrics", []),
    ("synthesis", []),
    ("inference", []),
    ("prototypes", []),
    ("training", []),
    ("profile_step", []),
]
SCRIPTS = {"profile_step": "profile_training_step.py"}  # sections whose script is not bench_<name>.py
TIMEOUT_S = 20 * 60


def sections() -> list[tuple[str, list[str]]]:
    known = {name for name, _ in SECTIONS}
    found = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return SECTIONS + [(name, []) for name in found if name not in known]


def run_section(name: str, arguments: list[str]) -> tuple[bool, float]:
    script = HERE / SCRIPTS.get(name, f"bench_{name}.py")
    print(f"== {name} ({script.name})", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    start = time.perf_counter()
    try:
        ok = subprocess.run([sys.executable, str(script), *arguments], env=env, timeout=TIMEOUT_S).returncode == 0
    except subprocess.TimeoutExpired:
        print(f"{name}: stopped after {TIMEOUT_S} s")
        ok = False
    elapsed = time.perf_counter() - start
    print(f"== {name}: {'done' if ok else 'FAILED'} in {elapsed:.0f} s", flush=True)
    return ok, elapsed


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def section_table(rows: list[dict]) -> list[str]:
    lines = ["| what | ours | peer / baseline | ratio (ours better if > 1) | target | met | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        peer = f"{fmt(r['peer'])} {r['unit']} ({r['peer_name']})" if r.get("peer") is not None else ""
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(f"| {r['what']} | {fmt(r['ours'])} {r['unit']} | {peer} | {ratio} | {r.get('target', '')} | "
                     f"{met} | {r.get('note', '')} |")
    return lines


def profile_table(payload: dict) -> list[str]:
    now, before = payload["median_s"], payload["baseline"]["median_s"]
    lines = [f"One CPU training step, batch {payload['batch']}, {payload['image_size']} px, bundled Lite0, "
             f"{payload['threads']} torch thread(s), median of {payload['steps']} steps "
             "(bench/profile_training_step.py; an isolated loop: no loader, no Lightning). "
             f"Baseline = commit {payload['baseline_commit']}.", "",
             "| part | baseline s | now s | now share |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {before.get(name, 0.0):.3f} | {seconds:.3f} | {100 * seconds / now['total']:.1f} % |"
              for name, seconds in now.items()]
    rates = f"baseline {payload['baseline']['images_per_s']}, now {payload['images_per_s']}"
    lines += ["", f"images/s in this loop: {rates}",
              "", "Operators with the most self time now (fwd + bwd + step):", "", "| operator | s | calls |",
              "| --- | --- | --- |"]
    lines += [f"| `{op['op']}` | {op['self_cpu_s']:.3f} | {op['calls']} |" for op in payload["top_ops"][:10]]
    return lines


def write_summary(ran: list[tuple[str, bool, float]], started: str, wall_s: float, load_start: float) -> Path:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    lines = ["# Benchmarks (`make bench`)", "",
             f"- date: {started}; wall time {wall_s / 60:.1f} min",
             f"- machine: {machine()}; load average at the start {load_start:.1f} (other jobs on the machine slow "
             "every figure down; ratios measured in the same run are fairer than absolute figures)",
             f"- code: commit {commit}{' with uncommitted changes' if dirty else ''}", ""]
    targets: list[str] = []
    for name, ok, elapsed in ran:
        path = RESULTS / f"{name}.json"
        lines.append(f"## {name} ({elapsed:.0f} s{'' if ok else ', FAILED: see the log'})")
        lines.append("")
        if not ok or not path.exists():
            lines += ["no result", ""]
            continue
        payload = json.loads(path.read_text())
        if name == "profile_step":
            lines += profile_table(payload)
        elif payload.get("rows"):
            lines += section_table(payload["rows"])
            targets += [f"| {r['what']} | {fmt(r['ours'])} {r['unit']} | {r['target']} | "
                        f"{'yes' if r['met'] else '**no**'} |" for r in payload["rows"] if r.get("met") is not None]
        else:
            lines.append(f"results in bench/results/{name}.json")
        lines.append("")
    header = ["## Targets", "", "| what | figure | target | met |", "| --- | --- | --- | --- |", *targets, ""]
    summary = RESULTS / "summary.md"
    summary.write_text("\n".join(lines[:6] + header + lines[6:]) + "\n")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to leave out")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start, start = os.getloadavg()[0], time.perf_counter()
    ran = []
    for name, arguments in sections():
        if (args.only is not None and name not in args.only) or name in args.skip:
            continue
        ok, elapsed = run_section(name, arguments)
        ran.append((name, ok, elapsed))
    summary = write_summary(ran, started, time.perf_counter() - start, load_start)
    print(summary.read_text())
    print(f"wrote {summary}")
    return 0 if all(ok for _, ok, _ in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
