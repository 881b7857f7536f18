"""Throughput and lost updates of a shared counter, cachekit beside its baselines.

P processes increment one key as fast as they can, all started together;
each contender runs ROUNDS times, interleaved with the others, on a fresh
directory of the same disk. Printed per contender: the median ops/s, the
spread (min-max), the median ratio to the lossy ``inc`` of Flask-Caching's
FileSystemCache, and the updates lost (expected final value minus actual,
summed over all rounds).

Contenders, all on one directory under --dir (default: a fresh directory in
the project's folder, so on the project's disk, not tmpfs):

- ``cachekit.incr`` on FileSystemCache (CACHE_THRESHOLD=0);
- ``cache.cache.inc`` of Flask-Caching's FileSystemCache: get then set, lossy;
- a naive ``fcntl.flock`` held around that get/set: exact but slow;
- ``diskcache.Cache.incr`` (SQLite), the embedded anchor.

Run: ``python bench/incr.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Setup = Callable[[str], Callable[[], Any]]


def flask_caching_backend(directory: str) -> Any:
    from flask import Flask
    from flask_caching import Cache

    app = Flask(__name__)
    cache = Cache()
    cache.init_app(
        app,
        config={
            "CACHE_TYPE": "FileSystemCache",
            "CACHE_DIR": os.path.join(directory, "cache"),
            "CACHE_THRESHOLD": 0,
            "CACHE_DEFAULT_TIMEOUT": 0,
        },
    )
    return cache.cache


def setup_cachekit(directory: str) -> Callable[[], Any]:
    import cachekit

    backend = flask_caching_backend(directory)
    return lambda: cachekit.incr(backend, "counter")


def setup_lossy_inc(directory: str) -> Callable[[], Any]:
    backend = flask_caching_backend(directory)
    return lambda: backend.inc("counter")


def setup_flock(directory: str) -> Callable[[], Any]:
    backend = flask_caching_backend(directory)
    fd = os.open(os.path.join(directory, "naive.lock"), os.O_RDWR | os.O_CREAT, 0o600)

    def increment() -> Any:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            value = (backend.get("counter") or 0) + 1
            backend.set("counter", value)
            return value
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    return increment


def setup_diskcache(directory: str) -> Callable[[], Any]:
    import diskcache

    store = diskcache.Cache(os.path.join(directory, "diskcache"))
    return lambda: store.incr("counter")


def final_value(name: str, directory: str) -> int:
    if name == "diskcache.incr":
        import diskcache

        return int(diskcache.Cache(os.path.join(directory, "diskcache")).get("counter", 0))
    return int(flask_caching_backend(directory).get("counter") or 0)


CONTENDERS: dict[str, Setup] = {
    "cachekit.incr": setup_cachekit,
    "flask-caching inc (lossy)": setup_lossy_inc,
    "flock around get/set": setup_flock,
    "diskcache.incr": setup_diskcache,
}
BASELINE = "flask-caching inc (lossy)"


def worker(setup: Setup, directory: str, ops: int, start: Any, done: Any) -> None:
    increment = setup(directory)
    increment()  # warm up: imports, file creation
    start.wait()
    for _ in range(ops - 1):
        increment()
    done.put(time.perf_counter())


def run_once(name: str, root: str, processes: int, ops: int) -> tuple[float, int]:
    directory = tempfile.mkdtemp(prefix="round-", dir=root)
    ctx = mp.get_context("fork")
    start = ctx.Barrier(processes + 1)
    done = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(CONTENDERS[name], directory, ops, start, done))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    ends = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    elapsed = max(ends) - began
    lost = processes * ops - final_value(name, directory)
    shutil.rmtree(directory)
    return processes * (ops - 1) / elapsed, lost


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", "-p", type=int, default=4)
    parser.add_argument("--ops", type=int, default=2000, help="increments per process per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to create the cache directories")
    parser.add_argument("--only", action="append", help="run only these contenders (repeatable)")
    args = parser.parse_args()

    names = args.only or list(CONTENDERS)
    root = tempfile.mkdtemp(prefix="cachekit-bench-", dir=args.dir or os.getcwd())
    rates: dict[str, list[float]] = {name: [] for name in names}
    lost: dict[str, int] = dict.fromkeys(names, 0)
    try:
        for _ in range(args.rounds):
            for name in names:
                rate, missing = run_once(name, root, args.processes, args.ops)
                rates[name].append(rate)
                lost[name] += missing
    finally:
        shutil.rmtree(root, ignore_errors=True)

    total = args.rounds * args.processes * args.ops
    print(
        f"shared counter: {args.processes} processes x {args.ops} increments,"
        f" {args.rounds} rounds, on {os.path.abspath(args.dir or os.getcwd())}"
    )
    header = ("contender", "median ops/s", "min-max", "vs lossy inc", "lost updates")
    print("{:28} {:>12} {:>15} {:>12} {:>16}".format(*header))
    base = statistics.median(rates[BASELINE]) if BASELINE in rates else None
    for name in names:
        median = statistics.median(rates[name])
        spread = f"{min(rates[name]):,.0f}-{max(rates[name]):,.0f}"
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"{name:28} {median:12,.0f} {spread:>15} {ratio:>12} {lost[name]:>8} of {total}")


if __name__ == "__main__":
    main()
