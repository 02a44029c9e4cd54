"""`prn dashboard` in a real browser: headless Chromium renders index.html, every image must load, nothing may log an
error, and a screenshot of the page is taken.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in NUL on
file descriptors 3 and 4), so no WebDriver or websocket package is needed. `.ci/run` installs Debian's `chromium`
when it is missing; set PRN_CHROMIUM to use another Chromium or Chrome binary.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from prn_lightning.workflows.dashboard import build_dashboard
from test_dashboard import runs_dir  # noqa: F401  (fixture: a finished sweep, as the train workflow leaves it)

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--window-size=1280,900",
)
TIMEOUT_S = 60.0
IMAGES_JS = """JSON.stringify(Array.from(document.images, img => ({
    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight})))"""


def chromium_binary() -> str:
    """PRN_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH; fails (never skips) when none is."""
    candidates = [os.environ.get("PRN_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    for name in candidates:
        found = shutil.which(name) if name else None
        if found:
            return found
    pytest.fail("no Chromium found: install it (`apt-get install -y chromium`, what .ci/run does) or set PRN_CHROMIUM")


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe: commands, and the events seen meanwhile."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # Chromium reads commands on fd 3 and writes replies and events on fd 4; bash moves the pipe ends there,
        # from copies above 9 so that no move overwrites the other end.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        moves = f"3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-"
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" {moves}', binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=ends,
        )
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._read, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError(f"Chromium sent nothing more within {TIMEOUT_S} s (exit code {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Run one command and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


def render(page: Path, screenshot: Path, profile: Path) -> tuple[list[dict], list[str]]:
    """Open `page` in headless Chromium, save a full-page PNG screenshot; returns (the page's images, its errors).

    Errors are console messages of level error, uncaught exceptions and browser log entries of level error (which is
    where a resource that failed to load is reported).
    """
    browser = DevTools(chromium_binary(), profile)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        images = json.loads(browser.send("Runtime.evaluate", session, expression=IMAGES_JS,
                                         returnByValue=True)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
        return images, errors
    finally:
        browser.close()


def test_dashboard_renders_in_chromium_with_every_image_loaded(runs_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    index = Path(build_dashboard(runs_dir))
    screenshot = tmp_path / "dashboard.png"
    images, errors = render(index, screenshot, tmp_path / "profile")

    assert errors == []
    # every figure of the page: metrics vs the swept value, per category, loss curves, anomaly maps
    assert len(images) == index.read_text(encoding="utf-8").count("<img") >= 4
    for image in images:
        assert image["complete"] and image["width"] > 300 and image["height"] > 200, image
    with Image.open(screenshot) as shot:
        assert shot.width == 1280 and shot.height > 900  # the full page, longer than the window
        assert len(shot.convert("L").getcolors(1 << 16) or []) > 50  # the figures were painted, not a blank page


def test_a_broken_image_and_a_script_error_are_caught(runs_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The checks above can fail: a truncated inline PNG does not load, a console error is reported."""
    index = Path(build_dashboard(runs_dir))
    page = index.read_text(encoding="utf-8")
    start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = page[:start] + "iVBORw0KGgo" + page[page.index('"', start):]
    broken = broken.replace("</body>", "<script>console.error('dashboard broke')</script></body>")
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")

    images, errors = render(tmp_path / "broken.html", tmp_path / "broken.png", tmp_path / "profile")

    assert [image["width"] for image in images][0] == 0
    assert all(image["width"] > 0 for image in images[1:])
    assert "dashboard broke" in errors
