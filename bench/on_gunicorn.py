"""The demo under gunicorn: routes that use shared state beside one that touches none.

For each backend, gunicorn serves the demo app with 4 sync workers and wrk
loads ``GET /health`` (no state), ``POST /hits`` (``cachekit.incr`` through
the app's ``Cache``) and ``GET /quote`` (a memoized view, always hot: the
demo's ``quote``, fresh for 10 s and served stale for 60 s while it is
refreshed), in turn, ROUNDS times each; the table gives the median requests
per second and the median per-round ratios to ``/health``. RedisCache runs
twice: as it is, and with the near cache (``CACHEKIT_NEAR_CACHE``: each
worker serves the memoized value from its own memory). Afterwards the
counter must have moved by the number of ``/hits`` responses wrk counted,
plus at most the requests in flight when each wrk run stopped.
Needs ``wrk`` on the PATH (``apt-get install wrk``).

Run: ``python bench/on_gunicorn.py`` (``--help`` for the options), or ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import save  # noqa: E402
from tests.server import get_ok, gunicorn  # noqa: E402

#: A wrk script that sends every request as a POST.
POST_SCRIPT = 'wrk.method = "POST"\n'


def wrk(
    url: str, seconds: int, connections: int, post: bool = False, refusals: bool = False
) -> tuple[float, int]:
    """Requests per second and the number of responses of one wrk run.

    Any answer but 2xx fails the run, unless ``refusals`` (a rate limited route's 429s).
    """
    script: list[str] = []
    if post:
        path = Path(tempfile.mkdtemp(prefix="cachekit-bench-wrk-")) / "post.lua"
        path.write_text(POST_SCRIPT)
        script = ["-s", str(path)]
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", *script, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad and not refusals:
        raise RuntimeError(f"{url}: {bad.group(1)} failed responses\n{out}")
    return rate, total


def measure(
    name: str, env: dict[str, str], rounds: int, seconds: int, connections: int
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="cachekit-bench-gunicorn-"))
    try:
        with gunicorn(folder, "-w", "4", env=env) as base:
            wrk(base + "/health", 1, connections)  # warm up every worker
            wrk(base + "/quote", 1, connections)  # (and compute the quote once)
            start = get_ok(base + "/hits")["hits"]
            plain, counted, memoized, served = [], [], [], 0
            for _ in range(rounds):
                plain.append(wrk(base + "/health", seconds, connections)[0])
                rate, total = wrk(base + "/hits", seconds, connections, post=True)
                counted.append(rate)
                served += total
                memoized.append(wrk(base + "/quote", seconds, connections)[0])
            final = get_ok(base + "/hits")["hits"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratios = [hits / empty for hits, empty in zip(counted, plain, strict=True)]
    memo_ratios = [quote / empty for quote, empty in zip(memoized, plain, strict=True)]
    row = {
        "backend": name,
        "no_state_rps": statistics.median(plain),
        "hits_rps": statistics.median(counted),
        "ratio": statistics.median(ratios),
        "memoized_rps": statistics.median(memoized),
        "memoized_ratio": statistics.median(memo_ratios),
        # wrk counts the responses it read before it stopped; the requests in flight then
        # (at most one per connection and round) were served too.
        "uncounted": (final - start) - served,
    }
    if not 0 <= row["uncounted"] <= rounds * connections:
        moved = final - start
        raise RuntimeError(f"{name}: /hits served {served} but the counter moved {moved}")
    print(f"{name:22} {row['no_state_rps']:>10,.0f} {row['hits_rps']:>10,.0f}"
          f" {row['ratio']:>7.2f}x {row['memoized_rps']:>10,.0f} {row['memoized_ratio']:>7.2f}x"
          f" {row['uncounted']:>10}")  # fmt: skip
    return row


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--seconds", type=int, default=4)
    options.add_argument("--connections", type=int, default=32)
    options.add_argument("--json")
    args = options.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on the PATH (apt-get install wrk)")
    backends: dict[str, dict[str, str]] = {
        "LMDBCache": {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"},
        "FileSystemCache": {},
    }
    server = None
    if shutil.which("redis-server"):
        from tests.redisserver import RedisServer

        server = RedisServer(Path(tempfile.mkdtemp(prefix="cachekit-bench-redis-")))
        server.start()
        backends["RedisCache"] = {"FLASK_CACHE_TYPE": "RedisCache",
                                  "FLASK_CACHE_REDIS_URL": server.url}  # fmt: skip
        backends["RedisCache, near cache"] = {**backends["RedisCache"],
                                              "FLASK_CACHEKIT_NEAR_CACHE": "true"}  # fmt: skip
    print(f"gunicorn -w 4 (sync), wrk -t2 -c{args.connections}, {args.seconds} s x {args.rounds}")
    print(f"{'backend':22} {'/health':>10} {'/hits':>10} {'ratio':>8} {'/quote':>10}"
          f" {'ratio':>8} {'in flight':>10}")  # fmt: skip
    try:
        rows = [
            measure(name, env, args.rounds, args.seconds, args.connections)
            for name, env in backends.items()
        ]
    finally:
        if server is not None:
            server.stop()
    print()
    title = "gunicorn -w 4: POST /hits and GET /quote (memoized) beside GET /health (no state)"
    save(args.json, [{"title": title, "gunicorn": rows}])
    if args.json is None:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
