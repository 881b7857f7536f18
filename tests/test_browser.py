"""The demo's pages in a real headless browser (Debian's ``chromium``), served by real gunicorn.

Skipped locally without chromium; under ``CI=true`` a missing browser fails
(``.ci/run`` installs it).
"""

from __future__ import annotations

import os
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
