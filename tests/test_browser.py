"""The demo's pages in a real headless browser (Debian's ``chromium``), served by real gunicorn.

Skipped locally without chromium; under ``CI=true`` a missing browser fails
(``.ci/run`` installs it).
"""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from .redisserver import in_ci
from .server import concurrently, get_ok, gunicorn, post_ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parent.parent

HITS = 25


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
    if in_ci():
        pytest.fail(message + ": CI must check the pages in a browser")
    pytest.skip(message)


def rendered(browser: str, url: str) -> str:
    """The page's DOM once its scripts ran, as the browser serialises it."""
    with tempfile.TemporaryDirectory(prefix="cachekit-chromium-") as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # root in a container: the sandbox cannot start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": profile},
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


class Page(HTMLParser):
    """The links of a page and the text of its tables' cells, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.cells: dict[str, list[str]] = {}
        self.ids: set[str] = set()
        self._table = ""
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        elif tag == "table":
            self._table = str(found.get("id") or "")
            self.cells.setdefault(self._table, [])
        elif tag in ("td", "th"):
            self._in_cell = True
            self.cells.setdefault(self._table, []).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[self._table][-1] += data


def parsed(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def test_the_index_links_work_and_the_stats_page_shows_figures(tmp_path: Path) -> None:
    browser = chromium()
    with gunicorn(tmp_path, "-w", "2") as base:
        concurrently(5, [lambda: post_ok(base + "/hits")] * HITS)
        index = parsed(rendered(browser, base + "/"))
        assert len(index.links) >= 10, index.links
        for link in index.links:  # every link the browser found answers 200
            with urllib.request.urlopen(base + link, timeout=30) as response:
                assert response.status == 200, link
        assert "/stats/page" in index.links

        deadline = time.monotonic() + 10  # the other worker's figures: within its interval
        while get_ok(base + "/stats")["all_workers"]["operations"]["incr"] < HITS + 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        stats = parsed(rendered(browser, base + "/stats/page"))
        operations = stats.cells["operations"]
        incr = operations[operations.index("incr") + 1]  # the all-workers column
        assert int(incr.replace(",", "")) >= HITS + 2  # the hits, and each worker's boot
        figures = stats.cells["figures"]
        assert "locks_taken" in figures and "lock_wait_p99" in figures
        taken = figures[figures.index("locks_taken") + 1]
        assert int(taken.replace(",", "")) >= HITS
        p99 = figures[figures.index("lock_wait_p99") + 1]
        assert p99 == "none" or p99.startswith("<= "), p99  # a bound, never a bare number
        assert "wait-chart" in stats.ids


#: Measures every <text> of the page's one SVG in the browser's own layout and writes the
#: problems (a box past the edge, two boxes that overlap) into #result, with the widest box.
MEASURE = """<script>
const svg = document.querySelector("svg");
const width = svg.width.baseVal.value, height = svg.height.baseVal.value;
const boxes = [...svg.querySelectorAll("text")].map((text) => {
  const box = text.getBBox();
  return {x: box.x, y: box.y, w: box.width, h: box.height, text: text.textContent};
});
const problems = [];
for (const b of boxes) {
  if (b.x < 0 || b.y < 0 || b.x + b.w > width + 0.5 || b.y + b.h > height + 0.5) {
    problems.push(`past the edge: ${b.text}`);
  }
}
for (let i = 0; i < boxes.length; i++) {
  for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    const across = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
    const down = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
    if (across > 1 && down > 1) problems.push(`overlap: ${a.text} | ${b.text}`);
  }
}
const widest = Math.max(...boxes.map((b) => b.w));
document.getElementById("result").textContent = JSON.stringify({problems, widest});
</script>"""


@pytest.mark.parametrize("chart", sorted(p.name for p in (ROOT / "docs").glob("*.svg")))
def test_the_charts_text_stays_inside_and_apart(chart: str, tmp_path: Path) -> None:
    browser = chromium()
    page = tmp_path / "chart.html"
    svg = (ROOT / "docs" / chart).read_text()
    page.write_text(
        f'<!doctype html><html><body>{svg}<pre id="result"></pre>{MEASURE}</body></html>'
    )
    html = rendered(browser, page.as_uri())
    found = re.search(r'<pre id="result">(.*?)</pre>', html, re.S)
    assert found, html[-2000:]
    result = json.loads(htmllib.unescape(found.group(1)))
    assert result["widest"] > 100, "no text was laid out: is a font installed?"
    assert result["problems"] == [], result["problems"]


def screenshot(browser: str, url: str, out: Path) -> bytes:
    """A PNG of ``url`` as headless Chromium paints it at 1280x1000."""
    with tempfile.TemporaryDirectory(prefix="cachekit-chromium-") as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1280,1000",
                f"--screenshot={out}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": profile},
        )
    assert result.returncode == 0 and out.exists(), result.stderr[-2000:]
    return out.read_bytes()


def painted_levels(png: bytes) -> int:
    """How many distinct byte values the PNG's pixels hold: a blank page has a handful."""
    import struct
    import zlib

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, data = 8, b""
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        if kind == b"IDAT":
            data += png[at + 8 : at + 8 + length]
        at += 12 + length
    return len(set(zlib.decompress(data)))


def test_the_demo_index_and_the_docs_front_page_are_painted(tmp_path: Path) -> None:
    """Screenshots: both pages render text and images, not a blank or an error page."""
    browser = chromium()
    docs = ROOT / "docs" / "_build" / "html" / "index.html"
    if not docs.exists():
        message = "the docs are not built (make docs)"
        if in_ci():
            pytest.fail(message + ": make test builds them first")
        pytest.skip(message)
    with gunicorn(tmp_path, "-w", "1") as base:
        index = screenshot(browser, base + "/", tmp_path / "demo-index.png")
        dom = rendered(browser, base + "/")
    assert painted_levels(index) > 100, "the demo's index painted (almost) nothing"
    assert "cachekit demo" in dom and "curl -X POST" in dom
    front = screenshot(browser, docs.as_uri(), tmp_path / "docs-index.png")
    assert painted_levels(front) > 100, "the docs' front page painted (almost) nothing"
    assert "cachekit" in rendered(browser, docs.as_uri())
