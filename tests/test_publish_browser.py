"""The published page in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

A header click reorders the rows, the filter box hides rows, the plots are in the DOM, the page fetches
nothing, the screenshot is a page and not a blank; and a store whose model is named
`<script>alert(1)</script>` shows the name as text with no dialog opened.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from recorded_stores import CELLS, record_store

from analysis.publish import publish

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--remote-debugging-port=0")
VIEWPORT = (1280, 1600)
HOSTILE = "<script>alert(1)</script>"


class Browser:
    """One headless chromium and a DevTools websocket to its first page; events are kept in order."""

    def __init__(self):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="qmx-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"chromium wrote no DevToolsActivePort (exit {self.proc.poll()})")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))     # localhost, never a proxy
        pages = json.load(no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=10))
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        # no Origin header: chromium refuses DevTools connections from other origins
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True, http_no_proxy=["127.0.0.1"])
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.waited = 0             # events before this index were already returned by wait_for
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1,
                  mobile=False)

    def send(self, method: str, **params) -> dict:
        call = next(self.ids)
        self.ws.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == call:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, *events: str, timeout: float = 30) -> dict:
        """The next of `events` to arrive (those already kept are not waited for twice)."""
        deadline = time.monotonic() + timeout
        seen = self.waited
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events[seen:], seen):
                if e.get("method") in events:
                    self.waited = i + 1
                    return e
            seen = len(self.events)
            self.ws.settimeout(max(0.01, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(" or ".join(events))

    def open(self, path: Path) -> None:
        self.events.clear()
        self.waited = 0
        self.send("Page.navigate", url=path.as_uri())
        while self.wait_for("Page.loadEventFired", "Page.javascriptDialogOpening")["method"] != "Page.loadEventFired":
            self.send("Page.handleJavaScriptDialog", accept=True)     # kept in events; a dialog blocks the load

    def js(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        box = self.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                      f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def dialogs(self) -> list[dict]:
        self.js("new Promise(r => setTimeout(r, 300))")        # let any late script run
        return [e for e in self.events if e.get("method") == "Page.javascriptDialogOpening"]

    def close(self) -> None:
        import websocket

        try:
            self.send("Browser.close")         # a clean exit removes chromium's own /tmp singleton folder
            self.proc.wait(10)
        except (OSError, RuntimeError, subprocess.TimeoutExpired, websocket.WebSocketException):
            self.proc.kill()
            self.proc.wait(10)
        self.ws.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def _column(browser: Browser, title: str) -> int:
    index = browser.js(f"[...document.querySelectorAll('#leaderboard-table th')].findIndex(th => "
                       f"th.textContent === {json.dumps(title)})")
    assert index >= 0, f"no {title!r} column"
    return index


def _cells(browser: Browser) -> list[str]:
    """The cell labels of the visible rows, top to bottom (the tags after a label left out)."""
    return browser.js(f"[...document.querySelectorAll('#leaderboard-table tbody tr')].filter(r => !r.hidden)"
                      f".map(r => r.cells[{_column(browser, 'cell')}].firstChild.textContent)")


def _header(browser: Browser, title: str) -> str:
    return f"#leaderboard-table th:nth-child({_column(browser, title) + 1})"


def test_the_page_sorts_filters_and_shows_its_plots(tmp_path, browser):
    record_store(tmp_path / "results")
    publish(tmp_path / "results", tmp_path / "site")
    page = tmp_path / "site" / "index.html"
    browser.open(page)

    by_ppl = [label for label, c in sorted(CELLS.items(), key=lambda kv: kv[1][4])]
    by_speed = [label for label, c in sorted(CELLS.items(), key=lambda kv: kv[1][5])]
    assert by_ppl != by_speed and by_ppl != by_speed[::-1]           # the sort has something to change
    assert _cells(browser) == by_ppl                                  # as the leaderboard ranks them
    browser.click(_header(browser, "decode tok/s"))
    assert _cells(browser) == by_speed                                # ascending on the first click
    browser.click(_header(browser, "decode tok/s"))
    assert _cells(browser) == by_speed[::-1]
    browser.click(_header(browser, "cell"))
    assert _cells(browser) == sorted(CELLS)

    browser.click("input.filter[data-table=leaderboard-table]")
    browser.send("Input.insertText", text="w4")
    assert _cells(browser) == sorted(label for label in CELLS if "w4" in label)

    plots = browser.js("[...document.querySelectorAll('figure.plot')].map(f => [f.id, f.querySelectorAll('svg')"
                       ".length, f.textContent])")
    drawn = {key: n for key, n, _ in plots}
    assert drawn == {"plot-quality-speed": 1, "plot-quality-memory": 1, "plot-serving": 1, "plot-mbu": 0}
    assert "no MBU measured" in plots[-1][2]                          # a CPU store: the plot says why it is absent
    texts = browser.js("[...document.querySelectorAll('#plot-quality-speed svg text')].map(t => t.textContent)")
    assert set(CELLS) <= set(texts)                                   # labels stay text (svg.fonttype none)
    data = browser.js("JSON.parse(document.getElementById('qmx-data').textContent)")
    assert data == json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    assert browser.js("document.querySelector('#skipped').textContent").count("group size 128 does not divide") == 1
    assert "RuntimeError: fp4 kernel missing" in browser.js("document.querySelector('#failed').textContent")

    fetched = {e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"}
    assert fetched == {page.as_uri()}                                 # self-contained: nothing else is loaded

    png = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    from PIL import Image
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == VIEWPORT
    colours = image.getcolors(maxcolors=1 << 20)
    most = max(n for n, _ in colours)
    assert len(colours) > 200 and most < 0.9 * image.width * image.height     # a page, not a blank


def test_a_hostile_model_name_is_shown_as_text_and_runs_nothing(tmp_path, browser):
    # the detector first: a page that does open a dialog is seen doing it
    control = tmp_path / "control.html"
    control.write_text("<script>alert(0)</script>")
    browser.open(control)
    assert [d["params"]["message"] for d in browser.dialogs()] == ["0"]

    breakout = "</script><script>alert(2)</script>\u2028"
    record_store(tmp_path / "results", model=HOSTILE, skip_reason=f"<img src=x onerror=alert(3)> {breakout}",
                 error=f"ValueError: {breakout}")
    publish(tmp_path / "results", tmp_path / "site")
    browser.open(tmp_path / "site" / "index.html")
    assert browser.dialogs() == []
    assert browser.js("document.querySelectorAll('script').length") == 2      # the data block and the page's own
    assert browser.js("document.querySelectorAll('img').length") == 0
    shared = browser.js("document.querySelector('#leaderboard p.shared').textContent")
    assert shared == f"All rows: sweep s; model {HOSTILE}; engine hf; KV auto"     # one model: said once, as text
    assert browser.js("document.querySelector('#skipped').textContent").count("<img src=x onerror=alert(3)>") == 1
    legend = browser.js("[...document.querySelectorAll('#plot-quality-speed svg text')].map(t => t.textContent)")
    assert f"{HOSTILE} (hf)" in legend
    data = browser.js("JSON.parse(document.getElementById('qmx-data').textContent)")
    assert {r["model"] for r in data["rows"]} == {HOSTILE} and data["failed"][0]["summary"] == f"ValueError: {breakout}".strip()
    browser.click(_header(browser, "perplexity"))                             # sorting builds no markup either
    assert browser.dialogs() == []
