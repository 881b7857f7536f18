"""Shared state on Redis: cachekit beside hand-written redis-py, in one run.

Starts its own redis-server on a free loopback port (or uses --url), then P
processes hammer one key, each contender ROUNDS times, interleaved. cachekit
goes through what an app has, a Flask app's ``flask_caching.Cache``
(``CACHE_TYPE=RedisCache``) inside an app context; redis-py runs without
hiredis (its pure-Python parser, what ``pip install redis`` gives) unless
``--hiredis``:

- a counter: ``cachekit.incr`` beside a raw ``INCR`` through redis-py;
- a dict value ``{"n": ..., "last": ...}`` read, changed and written back:
  ``cachekit.update`` beside a hand-written WATCH/MULTI loop and beside
  redis-py's ``Lock`` around get/set.

Run: ``python bench/on_redis.py`` (``--help`` for the options).
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "--hiredis" not in sys.argv:  # what `pip install redis` gives: the pure-Python parser
    sys.modules["hiredis"] = None  # type: ignore[assignment]

import redis  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from bench.harness import Contender, compare, parser, save  # noqa: E402


def client(location: str) -> redis.Redis:
    return redis.Redis.from_url(location.split("|")[0])


def cache(location: str) -> Any:
    """The app's ``flask_caching.Cache`` on Redis, as a request sees it (app context pushed)."""
    from flask import Flask
    from flask_caching import Cache

    url, prefix = location.split("|")
    app = Flask(__name__)
    shared = Cache()
    shared.init_app(
        app,
        config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": url, "CACHE_KEY_PREFIX": prefix},
    )
    app.app_context().push()
    return shared


def key(location: str, name: str) -> str:
    return location.split("|")[1] + name


def setup_cachekit_incr(location: str) -> Callable[[], Any]:
    import cachekit

    backend = cache(location)
    return lambda: cachekit.incr(backend, "counter")


def setup_raw_incr(location: str) -> Callable[[], Any]:
    conn, name = client(location), key(location, "counter")
    return lambda: conn.incr(name)


def bump(doc: dict[str, Any] | None) -> dict[str, Any]:
    doc = doc or {"n": 0, "last": None}
    return {**doc, "n": doc["n"] + 1, "last": os.getpid()}


def setup_cachekit_update(location: str) -> Callable[[], Any]:
    import cachekit

    backend = cache(location)
    return lambda: cachekit.update(backend, "doc", bump)


def decode(raw: Any) -> Any:
    return None if raw is None else pickle.loads(raw[1:])


def encode(value: Any) -> bytes:
    return b"!" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def setup_watch_multi(location: str) -> Callable[[], Any]:
    conn, name = client(location), key(location, "doc")

    def update() -> Any:
        with conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)  # type: ignore[no-untyped-call]
                    new = bump(decode(pipe.get(name)))
                    pipe.multi()
                    pipe.set(name, encode(new))
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    return update


def setup_redis_lock(location: str) -> Callable[[], Any]:
    conn, name = client(location), key(location, "doc")
    lock = conn.lock(key(location, "doc-lock"), timeout=10)

    def update() -> Any:
        with lock:
            new = bump(decode(conn.get(name)))
            conn.set(name, encode(new))
            return new

    return update


def final_counter(location: str) -> int:
    return int(client(location).get(key(location, "counter")) or 0)


def final_doc(location: str) -> int:
    return int(decode(client(location).get(key(location, "doc")))["n"])


INCR = "raw INCR (redis-py)"
WATCH = "WATCH/MULTI loop (redis-py)"
COUNTERS = {
    "cachekit.incr (RedisCache)": Contender(setup_cachekit_incr, final_counter),
    INCR: Contender(setup_raw_incr, final_counter),
}
DOCUMENTS = {
    "cachekit.update (RedisCache)": Contender(setup_cachekit_update, final_doc),
    WATCH: Contender(setup_watch_multi, final_doc),
    "redis-py Lock + get/set": Contender(setup_redis_lock, final_doc),
}


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--url", help="an existing Redis (default: start redis-server here)")
    options.add_argument(
        "--hiredis", action="store_true", help="let redis-py use hiredis (default: pure Python)"
    )
    args = options.parse_args()
    print(f"redis-py {redis.__version__}, hiredis: {HIREDIS_AVAILABLE and args.hiredis}")

    server = None
    url = args.url
    if url is None:
        from tests.redisserver import RedisServer

        server = RedisServer(Path(tempfile.mkdtemp(prefix="cachekit-bench-redis-")))
        server.start()
        url = server.url
    try:

        def fresh(name: str) -> str:
            return f"{url}|bench-{uuid.uuid4().hex[:8]}:"

        counters = compare(
            "counter on Redis",
            COUNTERS,
            {name: INCR for name in COUNTERS if name != INCR},
            fresh,
            args.processes,
            args.ops,
            args.rounds,
        )
        documents = compare(
            "dict read-modify-write on Redis",
            DOCUMENTS,
            {name: WATCH for name in DOCUMENTS if name != WATCH},
            fresh,
            args.processes,
            args.ops,
            args.rounds,
        )
    finally:
        if server is not None:
            server.stop()
    save(args.json, [counters, documents])


if __name__ == "__main__":
    main()
