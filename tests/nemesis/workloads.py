"""The operations the nemesis runs, the same in a worker process and behind an HTTP route.

Shared state, whatever the backend: ``counter`` (incr), ``log`` (a list that
updates and transactions append to), ``acct:a`` / ``acct:b`` (transfers in
both key orders, each also appending its id to the ledger ``transfers`` in the
same transaction, so that every acknowledged transfer can be found), and a
``lock`` named ``section`` around a plain ``cache.get`` / ``cache.set`` of
``guarded`` (only the lock makes that exact). A holder notes its grant
(time, fencing token, pid) the moment the lock is granted, and its exit just
before the release, through ``note``: a holder killed inside the section is
then still known to have held the lock.
``limit`` hits a rate limit of :data:`LIMIT` a day through the ``cachekit://``
storage of Flask-Limiter's ``limits``, with the strategy its argument names
(``fixed``, ``moving``, ``sliding``) and a key of its own every
:data:`LIMIT_KEY_SECONDS`: never more than the limit let through.
``invalidate`` raises ``version`` (incr), then invalidates the tag ``memo``;
``memo`` calls a memoized function (tag ``memo``, short timeout, stale
allowed) whose value is the ``version`` it read: a call that began after an
invalidation returned must never get a version older than that one; each
computation is noted as it begins and ends (:class:`Computations`), and no two
of one key may run at once (single flight).
``expire`` (not in :data:`KINDS`: the embedded stores' cases add it) reads, then
plainly ``cache.set``s with a timeout of :data:`EXPIRE_SECONDS`, then reads
again, a key of its own thread (one of :data:`EXPIRING_KEYS`; half the time one of
the first :data:`HOT_KEYS`, so that it reads values still live): the wall-clock
times around each call are in its value, so a value served after it expired, a
live one missing, or one nobody wrote there is found; the files left to expire
are what the FileSystemCache sweep deletes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from cachelib import FileSystemCache, RedisCache

import cachekit
from cachekit import LMDBCache

from .history import FAIL, INFO, OK, TOLD, NoteFile

OPENING = 1000
#: Where a holder writes its notes (see :mod:`.history`): called with a dict, writes at once.
Note = Callable[[dict[str, Any]], None]
KINDS = ("incr", "append", "transfer", "section", "invalidate", "memo", "limit")
#: Hits a day each rate limit lets through (one limit per strategy of ``limits``).
LIMIT = 40
#: Seconds each limit's key is used before the next: windows fill while faults strike.
LIMIT_KEY_SECONDS = 3
#: ``expire``'s timeout (seconds: cachelib and cachekit both make an int expiry of it, between
#: ``EXPIRE_SECONDS - 1`` and ``EXPIRE_SECONDS`` after the write), its keys per thread, and
#: the few of them it uses half the time.
EXPIRE_SECONDS = 2
EXPIRING_KEYS = 64
HOT_KEYS = 4
SWEEP_ONE_IN = 4
#: The strategies of ``limits`` by the names an operation gives them.
LIMITERS = {"fixed": "fixed-window", "moving": "moving-window", "sliding": "sliding-window-counter"}
#: The memoized function of each cache, made once per process (see :func:`_memoized`).
_MEMOIZED: dict[int, Any] = {}
#: Certainly not applied: the operation said so before changing anything.
NOT_APPLIED = (
    cachekit.LockTimeout,
    cachekit.ConcurrentUpdateError,
    cachekit.InvalidArgument,
    cachekit.ConfigurationError,
)


def open_cache(spec: str) -> Any:
    """A backend from a spec: a cache directory, ``lmdb:<directory>``, ``redis://...|prefix``
    ``sentinel:<port>,<port>...|prefix`` (the sentinels of master ``mymaster``) or
    ``cluster:<host:port>,...|prefix`` (a Redis Cluster's nodes; a prefix with a hash tag
    keeps a transaction's keys in one slot)."""
    if spec.startswith("cluster:"):
        from flask_caching.backends import RedisClusterCache

        nodes, prefix = spec.removeprefix("cluster:").split("|")
        return RedisClusterCache(cluster=nodes, key_prefix=prefix)
    if spec.startswith("sentinel:"):
        from flask_caching.backends import RedisSentinelCache

        ports, prefix = spec.removeprefix("sentinel:").split("|")
        sentinels = [("127.0.0.1", int(port)) for port in ports.split(",")]
        return RedisSentinelCache(sentinels=sentinels, master="mymaster", key_prefix=prefix)
    if spec.startswith("redis://"):
        url, prefix = spec.split("|")
        return RedisCache(host=redis.Redis.from_url(url, socket_timeout=5), key_prefix=prefix)
    if spec.startswith("lmdb:"):
        return LMDBCache(spec.removeprefix("lmdb:"))
    return FileSystemCache(spec, threshold=0)


class Computations:
    """Where this process notes each computation of the memoized function, as it begins and
    as it ends (``<folder>/<pid>.computations``, a JSON line each): single flight is
    checked on them (:func:`.checker._single_flight`). The folder is ``NEMESIS_NOTES`` (a
    gunicorn worker), or the one :func:`.runner.client_process` sets."""

    def __init__(self) -> None:
        self.file = NoteFile(os.environ.get("NEMESIS_NOTES", ""), "{pid}.computations")

    @property
    def folder(self) -> str:
        return self.file.folder

    @folder.setter
    def folder(self, folder: str) -> None:
        self.file.folder = folder

    def write(
        self, key: str, began: float, ended: float | None = None, granted: float | None = None
    ) -> None:
        if self.folder:
            record = {"key": key, "pid": os.getpid(), "began": began, "ended": ended}
            if granted is not None:
                record["granted"] = granted
            self.file.write_record(record)


computations = Computations()

#: When this thread was last granted a COMPUTE stripe (``granted``): the computation it then
#: runs held its stripe from then (:func:`_note_grants`).
_GRANTS = threading.local()


class _NotedHold:
    """A COMPUTE hold that notes, on this thread, when it was granted."""

    def __init__(self, held: Any) -> None:
        self._held = held

    def __enter__(self) -> Any:
        token = self._held.__enter__()
        _GRANTS.granted = time.monotonic()
        return token

    def __exit__(self, *exc: Any) -> Any:
        return self._held.__exit__(*exc)


def _note_grants(cache: Any) -> None:
    """Make ``cache``'s cachekit strategy note when each COMPUTE stripe is granted (the
    instance's ``hold`` wrapped, once): a computation's notes then say from when its
    stripe was held, which a pause or failover must overlap to excuse an overtaking."""
    from cachekit.resolve import strategy_for
    from cachekit.threadlocks import COMPUTE

    strategy = strategy_for(cache)
    if "hold" in vars(strategy):
        return
    inner = strategy.hold

    def hold(domain: int, names: Any, wait: float | None, what: str) -> Any:
        held = inner(domain, names, wait, what)
        return _NotedHold(held) if domain == COMPUTE else held

    strategy.hold = hold  # type: ignore[method-assign]


def _memoized(cache: Any) -> Any:
    """The memoized reader of ``version`` for ``cache`` (key from ``arg``)."""
    found = _MEMOIZED.get(id(cache))
    if found is None:

        @cachekit.memoize(cache, timeout=0.5, stale=0.5, tags=("memo",), fail_open=False)
        def versioned(name: str) -> int:
            began = time.monotonic()
            granted, _GRANTS.granted = getattr(_GRANTS, "granted", None), None
            computations.write(name, began, granted=granted)  # (at once: a killed one counts)
            try:
                time.sleep(random.uniform(0, 0.02))
                return int(cache.get("version") or 0)
            finally:  # (a computation that raised stored nothing, and ended here)
                computations.write(name, began, time.monotonic(), granted)

        found = _MEMOIZED.setdefault(id(cache), versioned)
    return found


def arg_for(kind: str, tag: str, rng: random.Random) -> str | None:
    """The argument of an operation of ``kind``, unique by ``tag`` where it must be."""
    if kind == "append":
        return tag
    if kind == "transfer":
        return f"{'ab' if rng.random() < 0.5 else 'ba'}.{tag}"
    if kind == "limit":  # a fresh window every LIMIT_KEY_SECONDS: filling while faults strike
        return f"{rng.choice(sorted(LIMITERS))}:{int(time.time() // LIMIT_KEY_SECONDS)}"
    if kind == "expire":  # half on a few keys (read again while live), half on many (expiring)
        number = rng.randrange(HOT_KEYS) if rng.random() < 0.5 else rng.randrange(EXPIRING_KEYS)
        return f"{number}|{tag}"
    return None


def expiring_key(arg: Any) -> str:
    """The key an ``expire`` operation writes: one of its thread's (its tag without the count)."""
    number, tag = str(arg).split("|")
    return f"expiring:{tag.rsplit('.', 1)[0]}:{number}"


#: The limiter of each cache and strategy, made once per process.
_LIMITERS: dict[tuple[int, str], Any] = {}


def _hit(cache: Any, arg: str) -> tuple[bool, int]:
    """One hit of the limit ``arg`` names (``<strategy>:<number>``, its own key); (let
    through, the day of its window)."""
    from limits import RateLimitItemPerDay
    from limits.storage import storage_from_string
    from limits.strategies import STRATEGIES

    strategy, number = arg.split(":")
    limiter = _LIMITERS.get((id(cache), strategy))
    if limiter is None:
        storage = storage_from_string("cachekit://", cache=cache)
        made = STRATEGIES[LIMITERS[strategy]](storage)
        limiter = _LIMITERS.setdefault((id(cache), strategy), made)
    day = int(time.time() // 86400)
    return bool(limiter.hit(RateLimitItemPerDay(LIMIT), f"nemesis{number}")), day


def _ignore(data: dict[str, Any]) -> None:
    pass


def transfer_keys(arg: Any) -> tuple[str, str]:
    """(debited, credited) of a transfer: ``ab...`` moves one from ``acct:a`` to ``acct:b``."""
    return ("acct:a", "acct:b") if str(arg).startswith("ab") else ("acct:b", "acct:a")


def run_op(
    cache: Any, kind: str, arg: Any, rng: random.Random, note: Note = _ignore
) -> tuple[str, Any]:
    """Run one operation; return its outcome (ok, fail, info, told) and its value.

    A section's value is ``{"granted", "token", "pid", "left"}``: ``granted``
    is read right after the grant and ``left`` right before the release (in a
    ``finally``, whatever the body did), so [granted, left] lies inside the
    time the lock was held; both are also passed to ``note`` as they happen.
    """
    section: dict[str, Any] = {}
    try:
        if kind == "incr":
            return OK, cachekit.incr(cache, "counter")
        if kind == "append":
            if rng.random() < 0.5:
                cachekit.update(cache, "log", lambda log: [*log, arg], [])
            else:
                with cachekit.transaction(cache, "log") as txn:
                    txn.setdefault("log", []).append(arg)
            return OK, None
        if kind == "transfer":
            keys = transfer_keys(arg)
            with cachekit.transaction(cache, *keys, "transfers") as txn:
                txn[keys[0]] = txn.get(keys[0], OPENING) - 1
                txn[keys[1]] = txn.get(keys[1], OPENING) + 1
                txn["transfers"] = [*txn.get("transfers", []), arg]
            return OK, None
        if kind == "section":
            with cachekit.lock(cache, "section", timeout=30) as handle:
                section = {"granted": time.monotonic(), "token": handle.token, "pid": os.getpid()}
                note(dict(section))
                try:
                    guarded = cache.get("guarded") or 0
                    time.sleep(rng.uniform(0, 0.01))
                    stored = cache.set("guarded", guarded + 1, timeout=0)
                finally:
                    section["left"] = time.monotonic()
                    note({"left": section["left"]})
                if not stored:
                    return INFO, section
            return OK, section
        if kind == "invalidate":
            version = cachekit.incr(cache, "version")
            cachekit.invalidate(cache, "memo")
            return OK, version
        if kind == "memo":
            _note_grants(cache)
            return OK, _memoized(cache)(f"key{rng.randrange(3)}")
        if kind == "limit":
            return OK, _hit(cache, str(arg))
        if kind == "expire":
            return _expire(cache, arg, rng)
        raise ValueError(kind)
    except cachekit.LeaseLost as error:
        if kind == "section":
            return TOLD, {**section, "why": _said(error)}
        return FAIL, "LeaseLost"  # a commit that lost its lease wrote nothing
    except NOT_APPLIED as error:
        return FAIL, {**section, "why": _said(error)} if section else _said(error)
    except Exception as error:  # StorageError, a plain cache call cut off: unknown
        return INFO, {**section, "why": _said(error)} if section else _said(error)


def _expire(cache: Any, arg: Any, rng: random.Random) -> tuple[str, Any]:
    """Read, ``cache.set`` (the plain call, no cachekit lock) and read again ``arg``'s key.

    On FileSystemCache, one in :data:`SWEEP_ONE_IN` then also runs a sweep, as a
    worker does every 256 writes (a short run makes fewer per process): its
    deletions are the value's ``swept``.
    """
    key = expiring_key(arg)
    times = [time.time()]
    before = cache.get(key)
    times.append(time.time())
    stored = cache.set(key, arg, timeout=EXPIRE_SECONDS)
    times.append(time.time())
    after = cache.get(key)
    times.append(time.time())
    value = {"before": before, "after": after, "times": times}
    if isinstance(cache, FileSystemCache) and rng.random() * SWEEP_ONE_IN < 1:
        from cachekit.resolve import strategy_for

        value["swept"] = strategy_for(cache).sweep()  # type: ignore[attr-defined]
    return (OK if stored else INFO), value


def _said(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]
