"""What signing values costs (cachekit.signing): signed beside unsigned, one process, in one run.

Every contender goes through what an app has: a Flask app's
``flask_caching.Cache`` (``CACHE_TYPE`` as in production) with ``CacheKit``
on it, inside an app context. "signed": ``SECRET_KEY`` set (signing on by
default); "unsigned": ``CACHEKIT_SIGN_VALUES = False`` (values as before
signing). For ``cache.get``, ``cache.set``, ``cachekit.update`` and a
memoized call (a hit), with values of 1 KB and 100 KB (bytes in a dict), on
LMDBCache and on Redis (its own redis-server on loopback, or ``--url``):
microseconds per operation, the median of ``--rounds`` rounds run
interleaved (signed and unsigned alternate, in alternating order), the
difference and the per-round ratio. ``update`` reads and writes, so it
checks one signature and makes one; ``get`` and the memoized call check
one; ``set`` makes one. A codec does not hash an envelope again that it made
or checked before (up to 4 MB of them, each at most 64 KB), so ``cache.get``
(one key read again and again, a hot value) costs less than ``cache.get,
new`` (8,000 keys read in turn, each one's payload hashed: a value another
worker wrote, or one read long ago).

Run: ``python bench/on_signing.py`` (``--help`` for the options), or ``make bench``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "--hiredis" not in sys.argv:  # what `pip install redis` gives: the pure-Python parser
    sys.modules["hiredis"] = None  # type: ignore[assignment]

from bench.harness import parser, save  # noqa: E402

SIZES = {"1 KB": 1000, "100 KB": 100_000}
OPERATIONS = ("cache.get", "cache.get, new", "cache.set", "cachekit.update", "memoized call")
#: "cache.get, new" reads these many keys in turn: more envelopes than a codec keeps as
#: checked (cachekit.signing.TRUSTED_BUDGET), so every read of a 1 KB value hashes its payload.
NEW_KEYS = 8000
MODES = ("unsigned", "signed")


def app_cache(config: dict[str, Any], signed: bool) -> tuple[Any, Any]:
    """An app and its Cache with CacheKit, signing on or off."""
    from flask import Flask
    from flask_caching import Cache

    from cachekit import CacheKit

    app = Flask(__name__)
    app.config.update(SECRET_KEY="bench secret", CACHEKIT_SIGN_VALUES=signed)
    cache = Cache()
    cache.init_app(app, config={**config, "CACHE_DEFAULT_TIMEOUT": 0, "CACHE_THRESHOLD": 0})
    CacheKit(cache, app)
    return app, cache


def steps(cache: Any, size: int) -> dict[str, Callable[[], Any]]:
    """One callable per operation, each on keys of its own holding a value of ``size`` bytes."""
    import cachekit

    value = {"payload": os.urandom(size // 2).hex()[:size], "n": 0}
    cache.set("get", value)
    cache.set("update", value)

    @cachekit.memoize(cache, timeout=0, name=f"bench-{uuid.uuid4().hex}")
    def memoized(x: int) -> dict[str, Any]:
        return value

    memoized(1)
    from cachekit.signing import TRUSTED_SIZE

    fresh = [f"new-{n}" for n in range(NEW_KEYS if size <= TRUSTED_SIZE else 16)]
    cache.set_many({key: {**value, "n": n} for n, key in enumerate(fresh)})
    turn = itertools.cycle(fresh)
    return {
        "cache.get": lambda: cache.get("get"),
        "cache.get, new": lambda: cache.get(next(turn)),
        "cache.set": lambda: cache.set("set", value),
        "cachekit.update": lambda: cachekit.update(cache, "update", lambda v: v),
        "memoized call": lambda: memoized(1),
    }


def timed(step: Callable[[], Any], ops: int) -> float:
    """Microseconds per call of ``step``, over ``ops`` calls."""
    step()
    began = time.perf_counter()
    for _ in range(ops):
        step()
    return (time.perf_counter() - began) / ops * 1e6


def table(
    title: str, config: Callable[[str], dict[str, Any]], ops: int, rounds: int
) -> dict[str, Any]:
    """One table; ``config(mode)`` gives each mode a store of its own."""
    apps = {mode: app_cache(config(mode), mode == "signed") for mode in MODES}
    rows: list[dict[str, Any]] = []
    print(f"{title}: microseconds per operation, one process, {ops} operations x {rounds} rounds")
    header = ("operation", "value", "unsigned us", "signed us", "added us", "ratio")
    print("{:18} {:>7} {:>12} {:>10} {:>9} {:>6}".format(*header))
    for label, size in SIZES.items():
        runs = {}
        for mode, (app, cache) in apps.items():
            with app.app_context():
                runs[mode] = steps(cache, size)
        for operation in OPERATIONS:
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for number in range(rounds):
                order = MODES if number % 2 == 0 else MODES[::-1]
                for mode in order:
                    with apps[mode][0].app_context():  # as a request would
                        times[mode].append(timed(runs[mode][operation], ops))
            plain, signed = (statistics.median(times[mode]) for mode in MODES)
            ratios = [s / u for s, u in zip(times["signed"], times["unsigned"], strict=True)]
            ratio = statistics.median(ratios)
            print(
                f"{operation:18} {label:>7} {plain:12.2f} {signed:10.2f}"
                f" {signed - plain:9.2f} {ratio:5.2f}x"
            )
            rows.append(
                {
                    "operation": operation,
                    "value": label,
                    "unsigned_us": plain,
                    "signed_us": signed,
                    "added_us": signed - plain,
                    "ratio": ratio,
                }
            )
    print()
    return {"title": title, "rows": rows}


def main() -> None:
    options = parser(__doc__)
    options.set_defaults(ops=2000, rounds=7)
    options.add_argument("--url", help="an existing Redis (default: start redis-server here)")
    options.add_argument("--hiredis", action="store_true", help="let redis-py use hiredis")
    options.add_argument("--dir", default=os.getcwd(), help="where to create the LMDB store")
    args = options.parse_args()

    root = tempfile.mkdtemp(prefix="cachekit-bench-", dir=args.dir)
    server = None
    url = args.url
    try:
        lmdb = table(
            "LMDBCache",
            lambda mode: {
                "CACHE_TYPE": "cachekit.LMDBCache",
                "CACHE_DIR": os.path.join(root, f"lmdb-{mode}"),
            },
            args.ops,
            args.rounds,
        )
        if url is None:
            from tests.redisserver import RedisServer

            server = RedisServer(Path(tempfile.mkdtemp(prefix="cachekit-bench-redis-")))
            server.start()
            url = server.url
        on_redis = table(
            "RedisCache (loopback)",
            lambda mode: {
                "CACHE_TYPE": "RedisCache",
                "CACHE_REDIS_URL": url,
                "CACHE_KEY_PREFIX": f"bench-{mode}-{uuid.uuid4().hex[:8]}:",
            },
            max(200, args.ops // 4),
            args.rounds,
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    save(args.json, [lmdb, on_redis])


if __name__ == "__main__":
    main()
