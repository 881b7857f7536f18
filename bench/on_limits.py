"""Flask-Limiter through the demo's ``/limited``: ``cachekit://`` beside limits' own storages.

For each strategy and storage, gunicorn serves the demo app with 4 sync
workers, and wrk loads ``GET /health`` (no state, no limit) and ``GET
/limited`` (one limit of 1,000 a minute on one key, through Flask-Limiter),
alternately, ROUNDS times each. The limit is reached within the first second,
so most requests are checked and refused (429), as under an attack: a
refused request costs the storage as much as an admitted one (every hit is
checked and counted), and a moving window is at its fullest. The anchors, in the
same run: ``memory://`` (Flask-Limiter's default: fast, but each worker
counts apart, so it is not a shared limit at all) and ``redis://``
(limits' own Redis storage, on the same server as cachekit's Redis). The
table gives median requests per second, the median per-round ratio to
``/health``, and the ratio to limits' ``redis://``. Needs ``wrk`` and
``redis-server`` on the PATH.

Run: ``python bench/on_limits.py`` (``--help`` for the options), or ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import save  # noqa: E402
from bench.on_gunicorn import wrk  # noqa: E402
from tests.server import gunicorn  # noqa: E402

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
#: One hot key, reached within the first second: the rest of a run is mostly refusals (429),
#: as in an attack or a runaway client; a moving window then holds its full 1,000 entries.
LIMIT = "1000 per minute"


def measure(
    name: str, env: dict[str, str], rounds: int, seconds: int, connections: int
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="cachekit-bench-limits-"))
    try:
        with gunicorn(folder, "-w", "4", env={**env, "FLASK_DEMO_LIMIT": LIMIT}) as base:
            wrk(base + "/health", 1, connections)  # warm up every worker
            wrk(base + "/limited", 1, connections, refusals=True)
            plain, limited = [], []
            for _ in range(rounds):
                plain.append(wrk(base + "/health", seconds, connections)[0])
                limited.append(wrk(base + "/limited", seconds, connections, refusals=True)[0])
        errors = [
            line
            for log in folder.glob("gunicorn-*.log")
            for line in log.read_text().splitlines()
            if "Traceback" in line
        ]
        if errors:
            raise RuntimeError(f"{name}: the server failed requests (see its log)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "storage": name,
        "no_state_rps": statistics.median(plain),
        "limited_rps": statistics.median(limited),
        "ratio": statistics.median(a / b for a, b in zip(limited, plain, strict=True)),
    }


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--seconds", type=int, default=3)
    options.add_argument("--connections", type=int, default=32)
    options.add_argument("--json")
    args = options.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on the PATH")
    import redis

    from tests.redisserver import RedisServer

    server = RedisServer(Path(tempfile.mkdtemp(prefix="cachekit-bench-redis-")))
    server.start()
    storages: dict[str, dict[str, str]] = {
        "memory:// (per process)": {"FLASK_RATELIMIT_STORAGE_URI": "memory://"},
        "redis:// (limits)": {"FLASK_RATELIMIT_STORAGE_URI": server.url},
        "cachekit:// LMDBCache": {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"},
        "cachekit:// FileSystemCache": {},
        "cachekit:// RedisCache": {
            "FLASK_CACHE_TYPE": "RedisCache",
            "FLASK_CACHE_REDIS_URL": server.url,
        },
    }
    tables = []
    try:
        for strategy in STRATEGIES:
            print(f"{strategy}: gunicorn -w 4 (sync), wrk -t2 -c{args.connections},"
                  f" {args.seconds} s x {args.rounds}")  # fmt: skip
            print(f"{'storage':28} {'/health':>9} {'/limited':>9} {'ratio':>7} {'vs redis://':>12}")
            rows = []
            for name, env in storages.items():
                # (limits' redis:// keeps every strategy's window in one key: start afresh)
                redis.Redis.from_url(server.url).flushall()
                row = measure(
                    name, {**env, "FLASK_RATELIMIT_STRATEGY": strategy},
                    args.rounds, args.seconds, args.connections,
                )  # fmt: skip
                rows.append(row)
            anchor = next(r for r in rows if r["storage"].startswith("redis://"))
            for row in rows:
                row["vs_limits_redis"] = row["limited_rps"] / anchor["limited_rps"]
                print(f"{row['storage']:28} {row['no_state_rps']:>9,.0f}"
                      f" {row['limited_rps']:>9,.0f} {row['ratio']:>6.2f}x"
                      f" {row['vs_limits_redis']:>11.2f}x")  # fmt: skip
            print()
            tables.append({"title": f"Flask-Limiter, {strategy}: GET /limited beside GET /health",
                           "limits": rows})  # fmt: skip
    finally:
        server.stop()
    save(args.json, tables)
    if args.json is None:
        print(json.dumps(tables))


if __name__ == "__main__":
    main()
