"""The full tour, run once, and its report opened in headless Chromium.

Chromium is driven over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``:
null-terminated JSON on file descriptors 3 and 4), so no extra package is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lossdoctor import tour

pytestmark = pytest.mark.slow

IMAGE_CHECK = """Array.from(document.images).map(i => ({src: i.getAttribute('src'),
    complete: i.complete, width: i.naturalWidth}))"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def tour_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tour")
    cli = Path(sys.executable).with_name("lossdoctor")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "lossdoctor"]
    done = subprocess.run([*command, "tour", "--out", str(out)], capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report written to" in done.stdout
    return out


def test_results_have_every_section(tour_dir):
    results = json.loads((tour_dir / "results.json").read_text())
    keys = [s.key for s in tour.SECTIONS]
    assert sorted(results) == sorted(keys)
    html = (tour_dir / "index.html").read_text()
    for section in tour.SECTIONS:
        assert f'id="{section.key}"' in html
    spectrum = results["spectrum"]
    eig = spectrum["eigen"]
    assert eig["which"] == "both" and len(eig["eigenvalues"]) == 10
    assert eig["eigenvalues"] == sorted(eig["eigenvalues"], reverse=True)


class DevTools:
    """A minimal CDP client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # child: commands on fd 3, replies on fd 4 (kept by pass_fds)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_pipes,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the browser may already be gone
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.mark.browser
def test_report_opens_in_chromium(tour_dir, tmp_path):
    binary = chromium_path()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed here (apt-get install chromium); CI runs this test")
    browser = DevTools(binary, tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": (tour_dir / "index.html").as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", timeout=120)
        images = browser.call("Runtime.evaluate", {"expression": IMAGE_CHECK, "returnByValue": True},
                              session=session)["result"]["value"]
        title = browser.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                             session=session)["result"]["value"]
        browser.call("Runtime.evaluate", {"expression": "1"}, session=session)  # flush pending events
    finally:
        browser.close()
    assert title == "lossdoctor tour"
    pngs = sorted(p.name for p in tour_dir.rglob("*.png"))
    assert images, "the report has no figures"
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"figures that did not load: {broken} (PNGs on disk: {pngs})"
    errors = []
    for event in browser.events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text"))
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(params["entry"]["text"] + " " + params["entry"].get("url", ""))
    assert not errors, f"console errors: {errors}"
