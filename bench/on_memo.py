"""Caching without stampedes: cachekit's memoize beside Flask-Caching, diskcache and dogpile.

Every contender memoizes the same function, a computation of ``--compute``
seconds (0.3) kept fresh for ``--timeout`` seconds (1), and is called in a
closed loop by ``--threads`` threads in each of ``--processes`` processes (4 x
8, as gunicorn ``-w 4 -k gthread --threads 8``) for ``--seconds`` (8), on a
store all processes share. Each contender runs ``--rounds`` times,
interleaved; the table shows medians over rounds of:

- computations per expiry window (``computations / (seconds / timeout)``):
  1 is the least that keeps values fresh;
- calls slower than the computation itself (in % of calls): callers that
  waited on a computation;
- p50 and p99 call latency, and calls per second;
- the oldest value served: seconds between the end of its computation and
  the call that got it (what ``stale`` allows, and what a stampede-free
  design may quietly stretch).

Contenders, on the paths users take:

- Flask-Caching ``@cache.memoize`` on FileSystemCache, through the app's
  ``flask_caching.Cache`` (the anchor);
- diskcache ``memoize_stampede`` (XFetch, early recomputation in a thread)
  on a ``diskcache.Cache``;
- dogpile.cache ``cache_on_arguments`` on its Redis backend with its
  distributed lock (one computation across processes; serves the old value
  while one caller recomputes), if redis-server is installed (its ``dbm``
  backend falls back to ``dbm.dumb`` where Python lacks gdbm, which breaks
  under threads);
- cachekit ``memoize`` through the app's ``Cache`` on FileSystemCache,
  LMDBCache and (if redis-server is installed) RedisCache: with ``stale``
  (= the timeout) and without (single flight and early refresh alone).

    python bench/on_memo.py [--seconds 8] [--rounds 2] [--json F] [--svg F]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

Setup = Callable[[str, float, float], Callable[[], Any]]


RUNS: list[int] = [0]  # this process's computations, whichever contender


def _work(compute: float) -> float:
    """The computation: counted, ``compute`` seconds long; its value is when it ended."""
    RUNS[0] += 1
    time.sleep(compute)
    return time.time()


def _flask_app(config: dict[str, Any]) -> tuple[Any, Any]:
    from flask import Flask
    from flask_caching import Cache

    app = Flask("bench")
    cache = Cache()
    cache.init_app(app, config={"CACHE_THRESHOLD": 0, "CACHE_DEFAULT_TIMEOUT": 300, **config})
    return app, cache


def _in_app(app: Any, call: Callable[[], Any]) -> Callable[[], Any]:
    def step() -> Any:
        with app.app_context():
            return call()

    return step


def flask_caching_memoize(location: str, compute: float, timeout: float) -> Callable[[], Any]:
    app, cache = _flask_app({"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": location})

    @cache.memoize(timeout=timeout)  # type: ignore[untyped-decorator]
    def value(x: int) -> float:
        return _work(compute)

    return _in_app(app, lambda: value(1))


def diskcache_memoize_stampede(location: str, compute: float, timeout: float) -> Callable[[], Any]:
    import diskcache

    cache = diskcache.Cache(location)

    @diskcache.memoize_stampede(cache, expire=timeout, beta=1)  # type: ignore[untyped-decorator]
    def value(x: int) -> float:
        return _work(compute)

    return lambda: value(1)


def dogpile_redis(redis_url: str) -> Setup:
    def setup(location: str, compute: float, timeout: float) -> Callable[[], Any]:
        from dogpile.cache import make_region

        region = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=timeout,
            arguments={
                "url": redis_url,
                "distributed_lock": True,  # one computation across processes
                "thread_local_lock": False,  # required by a lock shared by threads
                "lock_timeout": 30,
                "redis_expiration_time": 60,
            },
        )

        @region.cache_on_arguments()  # type: ignore[untyped-decorator,unused-ignore]
        def value(x: int) -> float:
            return _work(compute)

        return lambda: value(1)

    return setup


def cachekit_memoize(config: dict[str, Any], stale: bool) -> Setup:
    def setup(location: str, compute: float, timeout: float) -> Callable[[], Any]:
        import cachekit

        settings = {**config}
        if settings.get("CACHE_TYPE") != "RedisCache":
            settings["CACHE_DIR"] = location
        app, cache = _flask_app(settings)

        @cachekit.memoize(cache, timeout=timeout, stale=timeout if stale else 0)
        def value(x: int) -> float:
            return _work(compute)

        return _in_app(app, lambda: value(1))

    return setup


def _process(setup: Setup, location: str, options: Any, start: Any, results: Any) -> None:
    RUNS[0] = 0
    step = setup(location, options.compute, options.timeout)
    latencies: list[float] = []
    oldest = [0.0]
    failures: list[str] = []
    lock = threading.Lock()
    start.wait()
    end = time.monotonic() + options.seconds

    def loop() -> None:
        mine = []
        age = 0.0
        while time.monotonic() < end:
            began = time.perf_counter()
            try:
                computed_at = step()
            except Exception as error:  # a contender that breaks is reported, not hidden
                with lock:
                    failures.append(f"{type(error).__name__}: {error}")
                return
            mine.append(time.perf_counter() - began)
            age = max(age, time.time() - computed_at)
        with lock:
            latencies.extend(mine)
            oldest[0] = max(oldest[0], age)

    threads = [threading.Thread(target=loop) for _ in range(options.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(options.compute * 2)  # a background recomputation still running is counted
    results.put((RUNS[0], latencies, oldest[0], failures))


def run_once(setup: Setup, location: str, options: Any) -> dict[str, float]:
    ctx = mp.get_context("fork")
    start = ctx.Barrier(options.processes + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process, args=(setup, location, options, start, results))
        for _ in range(options.processes)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    runs, latencies, oldest = 0, [], 0.0
    for _ in procs:
        count, mine, age, failures = results.get(timeout=options.seconds * 10 + 60)
        if failures:
            raise RuntimeError(f"{len(failures)} calls failed, first: {failures[0]}")
        runs += count
        latencies += mine
        oldest = max(oldest, age)
    for proc in procs:
        proc.join()
    latencies.sort()
    windows = options.seconds / options.timeout
    return {
        "computations_per_window": runs / windows,
        "slow_percent": 100 * sum(x > options.compute for x in latencies) / len(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "calls_per_s": len(latencies) / options.seconds,
        "oldest_s": oldest,
    }


def contenders(redis_url: str | None) -> dict[str, Setup]:
    chosen: dict[str, Setup] = {
        "Flask-Caching memoize (FileSystemCache)": flask_caching_memoize,
        "diskcache memoize_stampede": diskcache_memoize_stampede,
        "cachekit memoize (FileSystemCache)": cachekit_memoize(
            {"CACHE_TYPE": "FileSystemCache"}, stale=False
        ),
        "cachekit memoize, stale (FileSystemCache)": cachekit_memoize(
            {"CACHE_TYPE": "FileSystemCache"}, stale=True
        ),
        "cachekit memoize, stale (LMDBCache)": cachekit_memoize(
            {"CACHE_TYPE": "cachekit.LMDBCache"}, stale=True
        ),
    }
    if redis_url:
        chosen["dogpile.cache (Redis, distributed lock)"] = dogpile_redis(redis_url)
        chosen["cachekit memoize, stale (RedisCache)"] = cachekit_memoize(
            {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_url}, stale=True
        )
    return chosen


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    from tests.server import free_port

    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return server, f"redis://127.0.0.1:{port}/0"


FIGURES = (
    "computations_per_window", "slow_percent", "p50_ms", "p99_ms", "calls_per_s", "oldest_s",
)  # fmt: skip


def compare(options: Any) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="cachekit-bench-memo-")
    redis = start_redis(work)
    try:
        chosen = contenders(redis[1] if redis else None)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for round_number in range(options.rounds):
            order = list(chosen.items())
            if round_number % 2:
                order.reverse()
            for index, (name, setup) in enumerate(order):
                location = os.path.join(work, f"r{round_number}-{index}")
                os.makedirs(location, mode=0o700)
                if redis:
                    import redis as redis_py

                    redis_py.Redis.from_url(redis[1]).flushall()
                runs[name].append(run_once(setup, location, options))
    finally:
        if redis:
            redis[0].terminate()
            redis[0].wait()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    title = (
        f"A {options.compute} s computation, fresh for {options.timeout} s, called by"
        f" {options.processes} processes x {options.threads} threads for {options.seconds} s"
        f" ({options.rounds} rounds, medians)"
    )
    print(title)
    print(
        "{:44} {:>14} {:>12} {:>9} {:>9} {:>10} {:>10}".format(
            "contender", "comp./window", "slow calls", "p50 ms", "p99 ms", "calls/s", "oldest s"
        )
    )
    for name, results in runs.items():
        row: dict[str, Any] = {"contender": name}
        row.update({f: statistics.median(r[f] for r in results) for f in FIGURES})
        rows.append(row)
        print(
            f"{name:44} {row['computations_per_window']:14.2f} {row['slow_percent']:11.2f}%"
            f" {row['p50_ms']:9.2f} {row['p99_ms']:9.1f} {row['calls_per_s']:10,.0f}"
            f" {row['oldest_s']:10.2f}"
        )
    return {"title": title, "rows": rows}


def draw(table: dict[str, Any]) -> str:
    """Two bar panels: computations per expiry window, and % of calls slower than a computation.

    Each panel's heading is two short lines within the panel's own width, so no
    text runs into the next panel or past the edge (the browser test checks it).
    """
    label, bar, panel, row_h, top_y = 310, 200, 330, 24, 96
    rows = table["rows"]
    height = top_y + 14 + row_h * len(rows)
    width = label + 2 * panel
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="22" font-size="15" font-weight="bold">Caching without stampedes</text>',
        f'<text x="10" y="40" fill="#555">{escape(table["title"])}</text>',
    ]
    panels = [
        (
            "computations_per_window",
            ("computations per window", "(1 is ideal; own scale)"),
            "{:.2f}",
        ),
        ("slow_percent", ("% of calls slower than", "the computation (own scale)"), "{:.2f}%"),
    ]
    for p, (field, (heading, note), fmt) in enumerate(panels):
        x0 = label + p * panel
        out.append(f'<text x="{x0}" y="66" font-weight="bold">{escape(heading)}</text>')
        out.append(f'<text x="{x0}" y="82" fill="#555">{escape(note)}</text>')
        top = max(max(r[field] for r in rows), 1e-9)
        for i, r in enumerate(rows):
            y = top_y + i * row_h
            length = max(1, round(bar * r[field] / top))
            colour = "#2e8b57" if r["contender"].startswith("cachekit") else "#9aa5b1"
            out += [
                f'<rect x="{x0}" y="{y + 4}" width="{length}" height="{row_h - 8}"'
                f' fill="{colour}"/>',
                f'<text x="{x0 + length + 5}" y="{y + 16}">{fmt.format(r[field])}</text>',
            ]
    for i, r in enumerate(rows):
        out.append(f'<text x="10" y="{top_y + i * row_h + 16}">{escape(r["contender"])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> None:
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--processes", type=int, default=4)
    options.add_argument("--threads", type=int, default=8)
    options.add_argument("--seconds", type=float, default=8.0)
    options.add_argument("--compute", type=float, default=0.3)
    options.add_argument("--timeout", type=float, default=1.0)
    options.add_argument("--rounds", type=int, default=2)
    options.add_argument("--json", help="also write the table to this file")
    options.add_argument("--svg", help="also draw the chart to this file")
    args = options.parse_args()
    table = compare(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([table], out, indent=1)
    if args.svg:
        Path(args.svg).write_text(draw(table))


if __name__ == "__main__":
    main()
