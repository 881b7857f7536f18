"""The embedded backends side by side: LMDBCache, FileSystemCache and diskcache, in one run.

Every cachekit contender goes through what an app has: a Flask app's
``flask_caching.Cache`` (``CACHE_TYPE`` set as in production), inside an app
context, as a request would. Each worker process builds its own. Tables:

1. a shared counter, P processes: ``cachekit.incr`` beside ``diskcache.Cache.incr``;
2. a dict read, changed and written back: ``cachekit.update`` beside a
   diskcache ``transact()`` around ``get`` and ``set``;
3. reads, one process: ``cache.get`` beside ``diskcache.Cache.get``;
4. durability: ``cachekit.incr`` with LMDBCache's ``durability="machine"`` (an
   fsync per commit) beside the default;
5. cost as the store grows: microseconds per ``cache.get``, ``cache.set`` and
   ``cachekit.incr`` of random keys among 1,000, 100,000 and 1,000,000.

Run: ``python bench/on_lmdb.py`` (``--help`` for the options), or ``make bench``.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import Contender, compare, parser, save  # noqa: E402
from cachekit.lmdb.store import filesystem_type  # noqa: E402

LMDB = "cachekit.LMDBCache"


def app_cache(directory: str, kind: str = LMDB, **options: Any) -> Any:
    """The app's ``flask_caching.Cache``, configured for ``kind``, with an app context pushed."""
    from flask import Flask
    from flask_caching import Cache

    app = Flask(__name__)
    cache = Cache()
    config = {
        "CACHE_TYPE": kind,
        "CACHE_DIR": os.path.join(directory, "cache"),
        "CACHE_THRESHOLD": 0,
        "CACHE_DEFAULT_TIMEOUT": 0,
    }
    if options:
        config["CACHE_OPTIONS"] = options
    cache.init_app(app, config=config)
    app.app_context().push()
    return cache


def bump(doc: dict[str, Any] | None) -> dict[str, Any]:
    doc = doc or {"n": 0, "last": None}
    return {**doc, "n": doc["n"] + 1, "last": os.getpid()}


def count(value: Any) -> int:
    return int(value["n"] if isinstance(value, dict) else value or 0)


# -- contenders ------------------------------------------------------------------------------


def incr_on(kind: str, **options: Any) -> Contender:
    def setup(directory: str) -> Callable[[], Any]:
        import cachekit

        cache = app_cache(directory, kind, **options)
        return lambda: cachekit.incr(cache, "counter")

    return Contender(setup, lambda d: count(app_cache(d, kind, **options).get("counter")))


def update_on(kind: str) -> Contender:
    def setup(directory: str) -> Callable[[], Any]:
        import cachekit

        cache = app_cache(directory, kind)
        return lambda: cachekit.update(cache, "doc", bump)

    return Contender(setup, lambda d: count(app_cache(d, kind).get("doc")))


def get_on(kind: str) -> Contender:
    def setup(directory: str) -> Callable[[], Any]:
        cache = app_cache(directory, kind)
        cache.set("doc", bump(None))
        return lambda: cache.get("doc")

    return Contender(setup, None)


def diskcache_store(directory: str) -> Any:
    import diskcache

    return diskcache.Cache(os.path.join(directory, "diskcache"))


def setup_diskcache_incr(directory: str) -> Callable[[], Any]:
    store = diskcache_store(directory)
    return lambda: store.incr("counter")


def setup_diskcache_transact(directory: str) -> Callable[[], Any]:
    store = diskcache_store(directory)

    def update() -> Any:
        with store.transact():
            new = bump(store.get("doc"))
            store.set("doc", new)
            return new

    return update


def setup_diskcache_get(directory: str) -> Callable[[], Any]:
    store = diskcache_store(directory)
    store.set("doc", bump(None))
    return lambda: store.get("doc")


DISKCACHE_INCR = "diskcache.incr"
DISKCACHE_TRANSACT = "diskcache transact get+set"
DISKCACHE_GET = "diskcache.get"
COUNTERS = {
    "cachekit.incr (LMDBCache)": incr_on(LMDB),
    "cachekit.incr (FileSystemCache)": incr_on("FileSystemCache"),
    DISKCACHE_INCR: Contender(
        setup_diskcache_incr, lambda d: count(diskcache_store(d).get("counter"))
    ),
}
DOCUMENTS = {
    "cachekit.update (LMDBCache)": update_on(LMDB),
    "cachekit.update (FileSystemCache)": update_on("FileSystemCache"),
    DISKCACHE_TRANSACT: Contender(
        setup_diskcache_transact, lambda d: count(diskcache_store(d).get("doc"))
    ),
}
READS = {
    "cache.get (LMDBCache)": get_on(LMDB),
    "cache.get (FileSystemCache)": get_on("FileSystemCache"),
    DISKCACHE_GET: Contender(setup_diskcache_get, None),
}
DEFAULT_DURABILITY = "cachekit.incr (LMDBCache, process)"
DURABILITY = {
    DEFAULT_DURABILITY: incr_on(LMDB),
    'cachekit.incr (LMDBCache, "machine")': incr_on(LMDB, durability="machine"),
}


# -- cost as the store grows -----------------------------------------------------------------


def grown(directory: str, size: int, seed: int) -> dict[str, float]:
    """Microseconds per operation on random keys of a store filled with ``size`` keys."""
    import cachekit

    cache = app_cache(directory)
    backend = cache.cache
    for start in range(0, size, 20_000):
        backend.set_many({f"key:{i}": i for i in range(start, min(size, start + 20_000))})
    rng = random.Random(seed)
    keys = [f"key:{rng.randrange(size)}" for _ in range(20_000)]
    operations: dict[str, Callable[[str], Any]] = {
        "cache.get": cache.get,
        "cache.set": lambda key: cache.set(key, 1),
        "cachekit.incr": lambda key: cachekit.incr(cache, key),
    }
    timings: dict[str, float] = {}
    for name, operation in operations.items():
        rounds = []
        for _ in range(3):
            began = time.perf_counter()
            for key in keys:
                operation(key)
            rounds.append((time.perf_counter() - began) / len(keys) * 1e6)
        timings[name] = statistics.median(rounds)
    return timings


def growth_table(root: str, sizes: list[int]) -> dict[str, Any]:
    print("LMDBCache as the store grows: microseconds per operation, one process, random keys")
    print("(disk MB: data.mdb's blocks, with the 64 MiB cachekit keeps allocated ahead)")
    print("{:>10} {:>10} {:>10} {:>14} {:>12}".format("keys", "cache.get", "cache.set",
                                                      "cachekit.incr", "disk MB"))  # fmt: skip
    rows = []
    for size in sizes:
        directory = tempfile.mkdtemp(prefix="grown-", dir=root)
        timings = grown(directory, size, seed=size)
        mb = os.stat(os.path.join(directory, "cache", "data.mdb")).st_blocks * 512 / 1e6
        print(f"{size:>10,} {timings['cache.get']:>10.2f} {timings['cache.set']:>10.2f}"
              f" {timings['cachekit.incr']:>14.2f} {mb:>12.1f}")  # fmt: skip
        rows.append({"keys": size, **timings, "disk_mb": mb})
        shutil.rmtree(directory, ignore_errors=True)
    print()
    return {"title": "LMDBCache as the store grows (microseconds per operation)", "growth": rows}


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dir", default=os.getcwd(), help="where to create the stores")
    options.add_argument(
        "--sizes", default="1000,100000,1000000", help="store sizes for the growth table"
    )
    args = options.parse_args()

    root = tempfile.mkdtemp(prefix="cachekit-bench-", dir=args.dir)

    def fresh(name: str) -> str:
        return tempfile.mkdtemp(prefix="round-", dir=root)

    kind = filesystem_type(args.dir)  # the kind of disk, never a machine's path
    where = f", on {kind}" if kind else ""
    try:
        tables = [
            compare(f"shared counter{where}", COUNTERS,
                    {name: DISKCACHE_INCR for name in COUNTERS if name != DISKCACHE_INCR},
                    fresh, args.processes, args.ops, args.rounds),
            compare("dict read-modify-write", DOCUMENTS,
                    {name: DISKCACHE_TRANSACT for name in DOCUMENTS if name != DISKCACHE_TRANSACT},
                    fresh, args.processes, args.ops, args.rounds),
            compare("reads of one key, one process", READS,
                    {name: DISKCACHE_GET for name in READS if name != DISKCACHE_GET},
                    fresh, 1, args.ops * 10, args.rounds),
            compare("durability of LMDBCache", DURABILITY,
                    {name: DEFAULT_DURABILITY for name in DURABILITY if name != DEFAULT_DURABILITY},
                    fresh, args.processes, max(50, args.ops // 20), args.rounds),
            growth_table(root, [int(size) for size in args.sizes.split(",")]),
        ]  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save(args.json, tables)


if __name__ == "__main__":
    main()
