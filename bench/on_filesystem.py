"""A shared counter on one machine: cachekit beside its baselines, in one run.

P processes increment one key as fast as they can, all started together; each
contender runs ROUNDS times, interleaved with the others, on a fresh directory
of the same disk (by default under the current directory, so not tmpfs).

- ``cachekit.incr`` on Flask-Caching's FileSystemCache (CACHE_THRESHOLD=0);
- ``cache.cache.inc`` of that FileSystemCache: get then set, lossy;
- a naive ``fcntl.flock`` held around that get/set: exact but slow;
- ``diskcache.Cache.incr`` (SQLite), the embedded anchor.

Run: ``python bench/on_filesystem.py`` (``--help`` for the options), or ``make bench``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import Contender, compare, parser, save  # noqa: E402
from cachekit.lmdb.store import filesystem_type  # noqa: E402


def flask_caching_backend(directory: str) -> Any:
    from flask import Flask
    from flask_caching import Cache

    cache = Cache()
    cache.init_app(
        Flask(__name__),
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


def final_flask_caching(directory: str) -> int:
    return int(flask_caching_backend(directory).get("counter") or 0)


def final_diskcache(directory: str) -> int:
    import diskcache

    return int(diskcache.Cache(os.path.join(directory, "diskcache")).get("counter", 0))


LOSSY = "flask-caching inc (lossy)"
CONTENDERS = {
    "cachekit.incr (FileSystemCache)": Contender(setup_cachekit, final_flask_caching),
    LOSSY: Contender(setup_lossy_inc, final_flask_caching),
    "flock around get/set": Contender(setup_flock, final_flask_caching),
    "diskcache.incr": Contender(setup_diskcache, final_diskcache),
}


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--dir", default=os.getcwd(), help="where to create the cache directories")
    args = options.parse_args()

    kind = filesystem_type(args.dir)  # the kind of disk, never a machine's path
    where = f", on {kind}" if kind else ""
    root = tempfile.mkdtemp(prefix="cachekit-bench-", dir=args.dir)
    try:
        table = compare(
            f"shared counter on FileSystemCache{where}",
            CONTENDERS,
            {name: LOSSY for name in CONTENDERS if name != LOSSY},
            lambda name: tempfile.mkdtemp(prefix="round-", dir=root),
            args.processes,
            args.ops,
            args.rounds,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save(args.json, [table])


if __name__ == "__main__":
    main()
