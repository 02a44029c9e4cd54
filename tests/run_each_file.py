"""`make test`: each test file in its own pytest process, then one closing line for the whole suite.

Why: ONNX Runtime, OpenVINO, Chromium's pipes and loader workers all start threads; forking (DataLoader workers,
subprocesses) in a process that earlier tests filled with such threads crashed the whole run with SIGSEGV, far from
the test that started them. One process per file keeps every file's environment what it would be in a user's run.
Extra arguments go to every pytest call (e.g. `-k export`); a file with no selected test is not a failure.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TESTS = Path(__file__).resolve().parent
NO_TESTS_COLLECTED = 5


def main(argv: list[str]) -> int:
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    broken = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in sorted(TESTS.glob("test_*.py")):
            report = Path(scratch) / f"{path.stem}.xml"
            code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    f"--junitxml={report}", str(path), *argv])
            if code == NO_TESTS_COLLECTED:
                continue
            if not report.is_file():
                broken.append(f"{path.name} (exit {code}, no report)")
                continue
            suite = ElementTree.parse(report).getroot().find("testsuite")
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            totals["failed"] += failed
            totals["skipped"] += skipped
            totals["passed"] += int(suite.get("tests", 0)) - failed - skipped
            if code != 0 and failed == 0:
                broken.append(f"{path.name} (exit {code})")
    for line in broken:
        print(f"crashed: {line}")
    totals["failed"] += len(broken)
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
