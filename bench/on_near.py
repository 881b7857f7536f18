"""The near cache: memoized hot reads on RedisCache with it, without it, and on LMDBCache.

The README's memo workload (``bench/on_memo.py``: a ``--compute`` s
computation, fresh for ``--timeout`` s, ``stale`` = the timeout, called in a
closed loop by ``--threads`` threads in each of ``--processes`` processes, 4 x
8) through the app's ``flask_caching.Cache``, on:

- RedisCache with ``CACHEKIT_NEAR_CACHE`` (each process serves hits from its
  memory, invalidated by the server);
- RedisCache without it (a round trip per call);
- cachekit.LMDBCache (one machine's shared memory map).

Each runs ``--rounds`` times, interleaved; the table shows medians and the
per-round ratios (goals: the near cache at least 4x RedisCache and at least
0.8x LMDBCache). Then the race of ``tests/nearrace.py`` (``--race`` rounds):
stale reads after an invalidation arrived (must be 0) and the delay from a
write's return to its invalidation's arrival in each reader.

    python bench/on_near.py [--seconds 8] [--rounds 3] [--race 10000] [--json F]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.on_memo import (  # noqa: E402
    Setup,
    _in_app,
    _work,
    cachekit_memoize,
    run_once,
    start_redis,
)


def near_memoize(config: dict[str, Any]) -> Setup:
    """cachekit memoize (stale = the timeout) with the near cache: set in the app's config."""

    def setup(location: str, compute: float, timeout: float) -> Any:
        from flask import Flask
        from flask_caching import Cache

        import cachekit

        app = Flask("bench")
        app.config.update(CACHEKIT_NEAR_CACHE=True)  # cachekit reads the app's config
        cache = Cache()
        cache.init_app(app, config={"CACHE_THRESHOLD": 0, "CACHE_DEFAULT_TIMEOUT": 300, **config})

        @cachekit.memoize(cache, timeout=timeout, stale=timeout)
        def value(x: int) -> float:
            return _work(compute)

        return _in_app(app, lambda: value(1))

    return setup


def contenders(redis_url: str) -> dict[str, Setup]:
    redis = {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_url}
    return {
        "cachekit memoize (RedisCache, near cache)": near_memoize(redis),
        "cachekit memoize (RedisCache)": cachekit_memoize(redis, stale=True),
        "cachekit memoize (LMDBCache)": cachekit_memoize(
            {"CACHE_TYPE": "cachekit.LMDBCache"}, stale=True
        ),
    }


def compare(options: Any) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="cachekit-bench-near-")
    redis = start_redis(work)
    if redis is None:
        raise SystemExit("redis-server is not installed")
    import redis as redis_py

    try:
        chosen = contenders(redis[1])
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for round_number in range(options.rounds):
            order = list(chosen.items())
            if round_number % 2:
                order.reverse()
            for index, (name, setup) in enumerate(order):
                location = os.path.join(work, f"r{round_number}-{index}")
                os.makedirs(location, mode=0o700)
                redis_py.Redis.from_url(redis[1]).flushall()
                runs[name].append(run_once(setup, location, options))
        race = None
        if options.race:
            from tests import nearrace

            outcome = nearrace.run(redis[1], rounds=options.race, readers=3, kill_every=500)
            race = outcome
    finally:
        redis[0].terminate()
        redis[0].wait()
        shutil.rmtree(work, ignore_errors=True)
    names = list(chosen)
    near, plain, lmdb = names
    title = (
        f"Memoized hot reads: a {options.compute} s computation, fresh for {options.timeout} s,"
        f" {options.processes} processes x {options.threads} threads for {options.seconds} s"
        f" ({options.rounds} rounds, medians)"
    )
    print(title)
    print(f"{'contender':44} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'oldest s':>9}")
    rows: list[dict[str, Any]] = []
    for name in names:
        results = runs[name]
        row = {
            "contender": name,
            "calls_per_s": statistics.median(r["calls_per_s"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "oldest_s": statistics.median(r["oldest_s"] for r in results),
        }
        rows.append(row)
        print(
            f"{name:44} {row['calls_per_s']:10,.0f} {row['p50_ms']:8.3f} {row['p99_ms']:8.2f}"
            f" {row['oldest_s']:9.2f}"
        )
    ratios = {}
    for label, base in (("near / RedisCache", plain), ("near / LMDBCache", lmdb)):
        each = [
            mine["calls_per_s"] / theirs["calls_per_s"]
            for mine, theirs in zip(runs[near], runs[base], strict=True)
        ]
        ratios[label] = each
        print(f"{label:44} {statistics.median(each):.2f}x (rounds: "
              + ", ".join(f"{r:.2f}" for r in each) + ")")  # fmt: skip
    table: dict[str, Any] = {"title": title, "rows": rows, "ratios": ratios}
    if race is not None:
        from tests import nearrace

        print()
        print("Race:", nearrace.describe(race))
        delays = sorted(race.delays_us)
        table["race"] = {
            "rounds": race.rounds,
            "reads": race.reads,
            "hits": race.hits,
            "violations": race.violations,
            "in_flight": race.in_flight,
            "kill_rounds": race.kill_rounds,
            "delay_us": {
                "p50": statistics.median(delays),
                "p99": delays[int(0.99 * (len(delays) - 1))],
                "max": delays[-1],
            },
        }
        if race.violations:
            print("STALE READS AFTER THE INVALIDATION ARRIVED:", race.first_violation)
    print()
    return table


def main() -> None:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--processes", type=int, default=4)
    options.add_argument("--threads", type=int, default=8)
    options.add_argument("--seconds", type=float, default=8.0)
    options.add_argument("--compute", type=float, default=0.3)
    options.add_argument("--timeout", type=float, default=1.0)
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--race", type=int, default=10_000, help="race rounds (0: none)")
    options.add_argument("--json", help="also write the table to this file")
    args = options.parse_args()
    table = compare(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([table], out, indent=1)
    if table.get("race", {}).get("violations"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
