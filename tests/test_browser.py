"""The pages a user opens, checked in a real browser (headless Chromium; `make browser` installs it).

Why a browser: a page can be valid HTML and still show nothing. `dvc plots show` rendered 7 of 16
plots at zero height offline (vega loaded from a CDN) and the dashboards showed U+FFFD where
byte-level BPE tokens were decoded one at a time; neither is visible without running the scripts.
Each page is opened through the DevTools protocol over a pipe (`--remote-debugging-pipe`: no port,
no websocket library), its scripts run, and the test fails on
- a blank plot: a vega chart, <img> or inline <svg> with zero rendered width or height;
- U+FFFD (a replacement character) in the page's text, titles or labels;
- a broken local link: a file that does not exist, or a #fragment with no such id;
- any request that leaves the machine (http/https), and any uncaught script error.
Screenshots go to $LFP_SCREENSHOTS (if set) for a person to look at.

Run by hand: `python tests/test_browser.py PAGE.html [...]` prints each page's findings.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
TIMEOUT_S = 60.0
WIDTH, HEIGHT = 1280, 900

# Runs in the page once it has loaded: waits (up to 20 s) for every vega chart to draw, then
# measures every plot and collects text, links and ids. VEGA_IDS: the elements the page's source
# hands to vegaEmbed (vega-embed replaces their content, script included, so they are read from
# the file, not the DOM).
MEASURE_JS = r"""
(async () => {
  const vegaBoxes = () => VEGA_IDS.map(id => document.getElementById(id) || {id, querySelector: () => null});
  const size = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const drawn = d => d.querySelector('canvas, svg.marks, .lfp-empty-plot');
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline && !vegaBoxes().every(d => drawn(d) && size(drawn(d))[1] > 0)) {
    await new Promise(r => setTimeout(r, 100));
  }
  await Promise.all([...document.images].map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const plots = [];
  for (const d of vegaBoxes()) {
    const c = drawn(d);
    const [w, h] = c ? size(c) : [0, 0];
    plots.push({kind: c && c.classList.contains('lfp-empty-plot') ? 'empty-note' : 'vega', name: d.id, width: w, height: h});
  }
  for (const i of document.images) {
    if (i.closest('.vega-embed')) continue;
    const [w, h] = i.naturalWidth ? size(i) : [0, 0];
    plots.push({kind: 'img', name: i.getAttribute('src').slice(0, 120), width: w, height: h});
  }
  for (const s of document.querySelectorAll('svg')) {
    if (s.closest('.vega-embed') || s.parentElement.closest('svg')) continue;
    const [w, h] = size(s);
    plots.push({kind: 'svg', name: s.getAttribute('aria-label') || s.getAttribute('class') || 'svg', width: w, height: h});
  }
  const attrs = [...document.querySelectorAll('[title],[aria-label],[alt]')].map(
    e => ['title', 'aria-label', 'alt'].map(a => e.getAttribute(a) || '').join(' '));
  const text = [document.title, document.body.textContent, ...attrs].join('\n');
  const bad = [];
  let at = text.indexOf('\ufffd');
  while (at >= 0 && bad.length < 5) { bad.push(text.slice(Math.max(0, at - 30), at + 30)); at = text.indexOf('\ufffd', at + 1); }
  return {
    plots,
    fffd: text.split('\ufffd').length - 1,
    fffd_examples: bad,
    links: [...document.querySelectorAll('a[href]')].map(a => ({href: a.getAttribute('href'), url: a.href})),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    height: document.documentElement.scrollHeight,
  };
})()
"""


def find_chromium() -> str | None:
    """$LFP_CHROMIUM, else the first Chromium/Chrome binary on PATH."""
    for name in (os.environ.get("LFP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


class DevTools:
    """A headless Chromium driven over `--remote-debugging-pipe` (fd 3 in, fd 4 out, NUL-framed JSON)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_r, self._w = os.pipe()
        self._r, from_w = os.pipe()
        # a tiny shim puts the pipe ends at fds 3 and 4, where Chromium expects them
        shim = "import os,sys;os.dup2(int(sys.argv[1]),3);os.dup2(int(sys.argv[2]),4);os.execv(sys.argv[3],sys.argv[3:])"
        args = [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--hide-scrollbars", "--mute-audio", "--disable-extensions",
                f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", shim, str(to_r), str(from_w), *args], pass_fds=(to_r, from_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command; keep the events that arrive before its reply."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@dataclass
class PageCheck:
    """What one page showed in the browser."""

    page: Path
    plots: list[dict[str, Any]] = field(default_factory=list)
    fffd: int = 0
    fffd_examples: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)
    height: int = 0

    @property
    def blank_plots(self) -> list[str]:
        return [f"{p['kind']} {p['name']} ({p['width']:.0f}x{p['height']:.0f})" for p in self.plots
                if p["width"] <= 0 or p["height"] <= 0]

    def problems(self) -> list[str]:
        out = [f"blank plot: {b}" for b in self.blank_plots]
        if self.fffd:
            out.append(f"{self.fffd} U+FFFD, e.g. {self.fffd_examples[:3]}")
        out += [f"broken link: {b}" for b in self.broken_links]
        out += [f"network request: {u}" for u in self.remote_requests]
        out += [f"failed to load: {u}" for u in self.failed_loads]
        out += [f"script error: {e}" for e in self.script_errors]
        return [f"{self.page}: {p}" for p in out]


VEGA_EMBED_RE = re.compile(r"""vegaEmbed\(\s*['"]#([^'"]+)['"]""")
_ID_RE = re.compile(r"""\b(?:id|name)\s*=\s*["']?([^"'\s>]+)""")


def broken_links(page: Path, links: list[dict[str, str]], ids: list[str]) -> list[str]:
    """Local links whose file is missing, or whose #fragment names no element of its page."""
    out = []
    for link in links:
        url = urlparse(link["url"])
        if url.scheme != "file":
            continue  # http(s)/mailto links are the reader's to follow, not files we ship
        target = Path(unquote(url.path))
        if not target.exists():
            out.append(f"{link['href']} (no file {target})")
            continue
        if url.fragment:
            frag = unquote(url.fragment)
            known = ids if target == page.resolve() else (
                _ID_RE.findall(target.read_text(encoding="utf-8", errors="replace")) if target.suffix == ".html" else [])
            if frag not in known:
                out.append(f"{link['href']} (no id '{frag}' in {target.name})")
    return out


def check_page(tools: DevTools, page: Path, screenshot_dir: Path | None = None) -> PageCheck:
    """Open `page`, let its scripts run, measure it; a viewport screenshot if `screenshot_dir`."""
    page = page.resolve()
    target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    first_event = len(tools.events)
    for domain in ("Page", "Runtime", "Network"):
        tools.call(f"{domain}.enable", session=session)
    tools.call("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
               session=session)
    tools.call("Page.navigate", {"url": page.as_uri()}, session=session)
    tools.wait_event("Page.loadEventFired", session)
    vega_ids = json.dumps(VEGA_EMBED_RE.findall(page.read_text(encoding="utf-8", errors="replace")))
    result = tools.call("Runtime.evaluate", {"expression": f"const VEGA_IDS = {vega_ids};\n{MEASURE_JS}", "awaitPromise": True, "returnByValue": True},
                        session=session)
    if "exceptionDetails" in result:
        raise RuntimeError(f"{page}: the measuring script failed: {result['exceptionDetails']}")
    found = result["result"]["value"]
    check = PageCheck(page, found["plots"], found["fffd"], found["fffd_examples"],
                      broken_links(page, found["links"], found["ids"]), height=found["height"])
    urls: dict[str, str] = {}
    for event in tools.events[first_event:]:
        if event.get("sessionId") != session:
            continue
        params = event.get("params", {})
        if event.get("method") == "Network.requestWillBeSent":
            url = urls[params["requestId"]] = params["request"]["url"]
            if urlparse(url).scheme not in ("file", "data", "blob", "about"):
                check.remote_requests.append(url)
        elif event.get("method") == "Network.loadingFailed" and not params.get("canceled"):
            check.failed_loads.append(f"{urls.get(params.get('requestId'), '?')[:120]}: {params.get('errorText')}")
        elif event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            check.script_errors.append(str(details.get("exception", {}).get("description") or details.get("text"))[:300])
    if screenshot_dir is not None:
        shot = tools.call("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        (screenshot_dir / f"{page.parent.name}-{page.stem}.png").write_bytes(base64.b64decode(shot["data"]))
    tools.call("Target.closeTarget", {"targetId": target})
    return check


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (`make browser` installs Debian's chromium)")
    tools = DevTools(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        tools.call("Browser.getVersion")
    except (RuntimeError, TimeoutError) as exc:
        tools.close()
        pytest.skip(f"{binary} does not start headless here: {exc}")
    yield tools
    tools.close()


def screenshots() -> Path | None:
    where = os.environ.get("LFP_SCREENSHOTS")
    return Path(where) if where else None


def assert_clean(check: PageCheck) -> None:
    assert not check.problems(), "\n".join(check.problems())


def test_plots_template_is_configured_and_offline():
    """Without a browser too: .dvc/config names the vendored page, which DVC can fill and which
    loads nothing from the network (DVC's own page pulls vega from a CDN: blank plots offline)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    template = ROOT / ".dvc" / config["plots"]["html_template"]
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # {scripts} is where DVC adds its CDN tags
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", page)
    for lib in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"/* {lib} (BSD-3-Clause) */" in page
    assert (ROOT / ".dvc" / "plots" / "LICENSES.md").read_text(encoding="utf-8").count("Redistribution and use") == 3


def test_detects_blank_plots_fffd_and_broken_links(browser, tmp_path):
    """The checker itself: a page with each fault is caught, a clean page passes."""
    good = tmp_path / "good.html"
    good.write_text("<!doctype html><meta charset='utf-8'><h1 id='top'>ok é ✓</h1>"
                    "<svg width='50' height='20'><rect width='50' height='20'/></svg><a href='#top'>up</a>"
                    "<a href='good.html#top'>self</a>", encoding="utf-8")
    assert_clean(check_page(browser, good))
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><meta charset='utf-8'><p>caf\ufffd</p><svg width='50' height='0'></svg>"
                   "<a href='missing.html'>gone</a><a href='#nowhere'>nowhere</a><img src='missing.png'>", encoding="utf-8")
    check = check_page(browser, bad)
    assert check.fffd == 1
    assert len(check.blank_plots) == 2  # the zero-height svg and the image that did not load
    assert len(check.broken_links) == 2


def test_dvc_plots_show_renders_every_plot_offline(browser, tmp_path):
    """`dvc plots show` with the vendored template (.dvc/config): every plot drawn, nothing fetched."""
    dvc = shutil.which("dvc", path=str(ROOT / ".venv" / "bin")) or shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    out = tmp_path / "plots"
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([dvc, "plots", "show", "-o", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    check = check_page(browser, out / "index.html", screenshots())
    kinds = [p["kind"] for p in check.plots]
    assert kinds.count("vega") + kinds.count("empty-note") >= 1 and kinds.count("img") >= 1, check.plots
    assert_clean(check)


def test_report_html(browser):
    page = REPORTS / "report.html"
    if not page.exists():
        pytest.skip(f"{page} not built (dvc repro)")
    check = check_page(browser, page, screenshots())
    assert_clean(check)


def test_feature_dashboards(browser):
    """Every page in reports/features/: the index (when built) and each run's dashboard."""
    pages = sorted((REPORTS / "features").glob("*.html"))
    if not pages:
        pytest.skip("no dashboards in reports/features (dvc repro)")
    problems = []
    for page in pages:
        problems += check_page(browser, page, screenshots()).problems()
    assert not problems, "\n".join(problems)


def main(argv: list[str]) -> int:
    """Print each page's findings (and screenshots to $LFP_SCREENSHOTS); exit 1 on a problem."""
    binary = find_chromium()
    if binary is None:
        print("Chromium is not installed (make browser)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as profile:
        tools = DevTools(binary, Path(profile))
        try:
            failed = False
            for page in argv:
                check = check_page(tools, Path(page), screenshots())
                print(f"{page}: {len(check.plots)} plots, height {check.height}px, {check.fffd} U+FFFD, "
                      f"{len(check.broken_links)} broken links")
                for problem in check.problems():
                    print("  " + problem)
                    failed = True
        finally:
            tools.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
