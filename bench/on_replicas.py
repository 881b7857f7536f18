"""What confirmed writes cost: a master with one replica, with and without ``WAIT``.

Starts a redis-server and a replica of it on free loopback ports, then P
processes hammer one key, each contender ROUNDS times, interleaved, through a
Flask app's ``flask_caching.Cache`` (``CACHE_TYPE=RedisCache``):

- ``cachekit.incr`` with ``CACHEKIT_REDIS_DURABLE_WRITES`` 0 (one ``INCRBY``)
  and 1 (``INCRBY`` and ``WAIT 1`` on one connection), beside a raw ``INCR``;
- ``cachekit.lock`` around nothing with ``CACHEKIT_REDIS_LEASE_REPLICAS`` 0 and
  1 (the default on a replicated master: grant and release each wait for the
  replica);
- ``cachekit.transaction`` of one key, with ``DURABLE_WRITES`` 0 and 1.

Run: ``python bench/on_replicas.py`` (``--help`` for the options), or ``make bench``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis  # noqa: E402

from bench.harness import Contender, compare, parser, save  # noqa: E402


def cache(location: str, **settings: int) -> Any:
    """The app's ``flask_caching.Cache`` on the master, with these ``CACHEKIT_REDIS_*``."""
    from flask import Flask
    from flask_caching import Cache

    url, prefix = location.split("|")
    app = Flask(__name__)
    app.config.update({f"CACHEKIT_REDIS_{name.upper()}": n for name, n in settings.items()})
    shared = Cache()
    shared.init_app(
        app,
        config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": url, "CACHE_KEY_PREFIX": prefix},
    )
    app.app_context().push()
    return shared


def incr_with(durable: int) -> Callable[[str], Callable[[], Any]]:
    def setup(location: str) -> Callable[[], Any]:
        import cachekit

        backend = cache(location, durable_writes=durable)
        return lambda: cachekit.incr(backend, "counter")

    return setup


def raw_incr(location: str) -> Callable[[], Any]:
    url, prefix = location.split("|")
    conn = redis.Redis.from_url(url)
    return lambda: conn.incr(prefix + "counter")


def lock_with(replicas: int) -> Callable[[str], Callable[[], Any]]:
    def setup(location: str) -> Callable[[], Any]:
        import cachekit

        backend = cache(location, lease_replicas=replicas)

        def step() -> None:
            with cachekit.lock(backend, f"L{os.getpid()}"):  # one lock per process: no waits
                pass

        return step

    return setup


def transaction_with(durable: int) -> Callable[[str], Callable[[], Any]]:
    def setup(location: str) -> Callable[[], Any]:
        import cachekit

        backend = cache(location, durable_writes=durable)
        name = f"doc{os.getpid()}"

        def step() -> None:
            with cachekit.transaction(backend, name) as txn:
                txn[name] = txn.get(name, 0) + 1

        return step

    return setup


def final_counter(location: str) -> int:
    url, prefix = location.split("|")
    return int(redis.Redis.from_url(url).get(prefix + "counter") or 0)


INCR = "raw INCR (redis-py)"
COUNTERS = {
    "cachekit.incr, DURABLE_WRITES 0": Contender(incr_with(0), final_counter),
    "cachekit.incr, DURABLE_WRITES 1": Contender(incr_with(1), final_counter),
    INCR: Contender(raw_incr, final_counter),
}
LOCKS = {
    "cachekit.lock, LEASE_REPLICAS 0": Contender(lock_with(0), None),
    "cachekit.lock, LEASE_REPLICAS 1 (default)": Contender(lock_with(1), None),
}
TRANSACTIONS = {
    "cachekit.transaction, DURABLE_WRITES 0": Contender(transaction_with(0), None),
    "cachekit.transaction, DURABLE_WRITES 1": Contender(transaction_with(1), None),
}


def main() -> None:
    options = parser(__doc__)
    args = options.parse_args()
    from tests.redisserver import RedisServer

    folder = Path(tempfile.mkdtemp(prefix="cachekit-bench-replicas-"))
    (folder / "master").mkdir()
    (folder / "replica").mkdir()
    master = RedisServer(folder / "master")
    master.start()
    replica = RedisServer(
        folder / "replica",
        extra=("--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0"),
    )
    replica.start()
    try:
        deadline = time.monotonic() + 30
        while b"master_link_status:up" not in replica.ask("INFO replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.1)

        def fresh(name: str) -> str:
            return f"{master.url}|bench-{uuid.uuid4().hex[:8]}:"

        tables = [
            compare(
                "counter on a master with one replica",
                COUNTERS,
                {name: INCR for name in COUNTERS if name != INCR},
                fresh,
                args.processes,
                args.ops,
                args.rounds,
            ),
            compare(
                "lock() on a master with one replica",
                LOCKS,
                {"cachekit.lock, LEASE_REPLICAS 1 (default)": "cachekit.lock, LEASE_REPLICAS 0"},
                fresh,
                args.processes,
                args.ops,
                args.rounds,
            ),
            compare(
                "transaction of one key on a master with one replica",
                TRANSACTIONS,
                {
                    "cachekit.transaction, DURABLE_WRITES 1": (
                        "cachekit.transaction, DURABLE_WRITES 0"
                    )
                },
                fresh,
                args.processes,
                args.ops,
                args.rounds,
            ),
        ]
    finally:
        replica.stop()
        master.stop()
    save(args.json, tables)


if __name__ == "__main__":
    main()
