"""RedisCache (and Sentinel, Cluster): the same contract across hosts, with Redis's own primitives.

How each operation works here:

- ``incr``: a bare ``INCRBY``, one command, so that the value stays the plain
  ASCII integer cachelib stores and ``cache.get`` reads (with a timeout,
  ``incr_expire.lua``). It takes no lease.
- ``update``: optimistic. Read the value, run ``fn`` locally, then
  ``compare_and_set.lua`` writes the new value only if the stored one is
  still what was read and no one else leases the key's stripe; otherwise it
  answers with the value now stored, and ``fn`` runs again on that, without a
  pause. After :data:`OPTIMISTIC_ATTEMPTS` lost races the caller leases the
  key, so that it wins the next try. While a transaction's lease covers the
  key it backs off and tries again (or takes the lease at once if that
  holder's process is proven dead). After :data:`MAX_ATTEMPTS` it raises
  :class:`~cachekit.errors.ConcurrentUpdateError`. ``fn`` may therefore run
  more than once: on Redis it must not have side effects.
- ``transaction``, ``lock``, ``get_or_compute``: leases on stripes (the
  generic operations of :mod:`cachekit.strategy` over
  :class:`~cachekit.redis.leases.RedisLeases`). A transaction commits every
  key in one script (``commit.lua``, arguments from
  :mod:`cachekit.redis.argv`) that first checks that each lease is still its
  own and that no key it writes was changed by a writer that takes no lease
  (``incr``, a plain ``cache.set``): all keys are written or none.

Connections: cachekit talks to the server through a client of its own
(:func:`cachekit.compat.bounded_redis_client`): every reply is awaited at most
``CACHEKIT_REDIS_TIMEOUT`` seconds, a connection opened within
``CACHEKIT_REDIS_CONNECT_TIMEOUT``, and no command is repeated blindly; a
failure is a :class:`~cachekit.errors.StorageError`. redis-py opens new
connections in a forked child, so nothing is shared across ``--preload``.

At first use the server's eviction policy and version are checked
(:mod:`cachekit.redis.server`). Values use the backend's own serializer and
``CACHE_KEY_PREFIX`` exactly as cachelib applies them; under Sentinel,
cachekit reads and writes the master. Expiry: ``timeout=None`` keeps a key's
remaining TTL (``KEEPTTL``), a number sets it relative to the server's clock.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Final, TypeVar

from cachelib.serializers import BaseRedisSerializer

from ..compat import (
    bounded_redis_client,
    is_cluster_client,
    redis_parts,
    sentinel_service,
    socket_timeout_of,
)
from ..errors import (
    CachekitError,
    ConcurrentUpdateError,
    ConfigurationError,
    InvalidArgument,
    LeaseLost,
    LockTimeout,
    UnsupportedBackend,
    ValueTypeError,
)
from ..findings import PROBLEM, UNREACHABLE, WARNING, Finding
from ..settings import DEFAULTS, Settings
from ..strategy import Entry, Strategy, Timeout, absolute_expiry, check_delta, check_key, seconds
from ..threadlocks import KEYS
from ..waiting import Backoff
from .argv import Read, Write, encode_commit
from .leases import MAX_POLL, MIN_POLL, RedisLeases, holder_is_dead
from .limits import RedisRateLimits
from .replication import replica_count
from .scripts import Scripts
from .server import eviction_problem, persistence_warning, read_facts, version_problem
from .translate import (
    CLIENT_ERRORS,
    RESPONSE_ERRORS,
    UNAVAILABLE,
    once_more_if_cut_off,
    translated,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Tries of an update without a lease; after these it leases the key and tries again.
OPTIMISTIC_ATTEMPTS: Final = 16
#: Most tries of an update in all before ConcurrentUpdateError (only writers that take
#: no lease, a native incr or a plain cache.set, can make it fail while it holds the lease).
MAX_ATTEMPTS: Final = 100
#: Stored expiry meaning "keep the key's current TTL" (Redis reports no absolute time).
KEEP: Final = -1


def check_server(client: Any) -> None:
    """Refuse a server that would evict state or is too old; say so if it will not tell."""
    with translated("checking the Redis server"):
        facts = once_more_if_cut_off(read_facts, client)
    problem = eviction_problem(facts)
    if problem:
        raise ConfigurationError(problem, setting="maxmemory-policy")
    too_old = version_problem(facts)
    if too_old:
        raise UnsupportedBackend(too_old, backend="Redis")
    for refusal in facts.refused:
        log.warning("cachekit could not check the Redis server: %s", refusal)


class RedisStrategy(Strategy):
    """Atomic operations on a cachelib / Flask-Caching ``RedisCache`` (and Sentinel, Cluster)."""

    name = "RedisCache"
    unavailable = UNAVAILABLE
    signing = "redis"  # ints plain ASCII (INCRBY), the rest signed envelopes (cachekit.signing)
    _locks: RedisLeases

    def __init__(self, backend: Any, settings: Settings = DEFAULTS) -> None:
        parts = redis_parts(backend)
        # Renewals wait a quarter of the lease at most, so that one cut off is tried again
        # in time; everything else waits CACHEKIT_REDIS_TIMEOUT.
        renewal_timeout = min(settings.redis_timeout, settings.lease / 4)
        from .replication import Replication, replica_count  # (the imports are another change's)

        with translated("connecting to Redis"):
            client = bounded_redis_client(
                parts.client, settings.redis_timeout, settings.redis_connect_timeout
            )
            renewal_client = bounded_redis_client(
                parts.client, renewal_timeout, min(settings.redis_connect_timeout, renewal_timeout)
            )
        check_server(client)
        scripts = Scripts(client)
        cluster = is_cluster_client(client)
        # Replicas confirm leases and commits where there are replicas (a master about to be
        # replaced must not grant one that counts), and every write with DURABLE_WRITES.
        replicated = settings.lease_replicas > 0 and replica_count(client) > 0
        self._replication = Replication(client, settings.redis_timeout)
        self._durable_writes = settings.durable_writes
        leases = RedisLeases(
            scripts,
            parts.prefix,
            settings,
            renewal_scripts=Scripts(renewal_client),
            cluster=cluster,
            replication=self._replication,
            renewal_replication=Replication(renewal_client, renewal_timeout),
            replicas=max(settings.lease_replicas if replicated else 0, settings.durable_writes),
        )
        super().__init__(backend, settings, locks=leases)
        self._client = client
        weakref.finalize(self, _close_quietly, client, renewal_client)  # cachekit's own
        self._scripts = scripts
        self._prefix = parts.prefix
        self._rate_limits = RedisRateLimits(
            client, scripts, self._key, self._replication, self._durable_writes
        )
        self._serializer = parts.serializer
        kind = type(parts.serializer)
        self._default_serializer = (
            kind.dumps is BaseRedisSerializer.dumps and kind.loads is BaseRedisSerializer.loads
        )
        self._near = _near_cache(self, parts.client, settings, cluster)

    def _key(self, key: str) -> str:
        return f"{self._prefix()}{key}"

    def rate_limits(self) -> RedisRateLimits:
        """One Lua script per hit, by the server's clock (:mod:`cachekit.redis.limits`)."""
        return self._rate_limits

    def load_many(self, keys: list[str]) -> list[Entry | None]:
        """The entries of ``keys``; through the near cache (:mod:`.near`) when it is on.

        A caller holding a lock (a computation's second look, ``forget``) reads Redis.
        """
        near = self._near
        if near is None or self._locks.holds_any():
            return self._load_many(keys)
        entries: list[Entry | None] = near.load_many(keys)
        return entries

    def commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str] = (),
        read: Mapping[str, Entry | None] | None = None,
    ) -> None:
        """:meth:`Strategy.commit`; the near cache then drops its copies of the keys at once."""
        try:
            super().commit(writes, deletes, read)
        finally:
            if self._near is not None:
                self._near.discard([*writes, *deletes])

    @classmethod
    def diagnose(cls, backend: Any, settings: Settings) -> list[Finding]:
        """The live server: eviction policy, version, persistence, what it refused to tell.

        Asked through a client with bounded waits (``CACHEKIT_CHECK_TIMEOUT`` per reply),
        so a dead server costs seconds; a server that does not answer is one
        finding of kind UNREACHABLE (not configuration).
        """
        findings = super().diagnose(backend, settings)
        parts = redis_parts(backend)
        client = None
        try:
            with translated("checking the server"):
                wait = settings.check_timeout
                client = bounded_redis_client(parts.client, wait, wait / 2)
                facts = read_facts(client)
                replicas = replica_count(client)
        except CachekitError as error:
            return [
                Finding(
                    PROBLEM,
                    f"Redis does not answer: {error}",
                    "start Redis or correct CACHE_REDIS_URL / CACHE_REDIS_HOST",
                    UNREACHABLE,
                ),
                *findings,
            ]
        finally:
            if client is not None:
                client.close()
        problem = eviction_problem(facts)
        if problem:
            findings.append(
                Finding(
                    PROBLEM, problem, "CONFIG SET maxmemory-policy noeviction (and in redis.conf)"
                )
            )
        too_old = version_problem(facts)
        if too_old:
            findings.append(Finding(PROBLEM, too_old, "upgrade Redis to 6.2 or later"))
        warning = persistence_warning(facts)
        if warning:
            findings.append(
                Finding(WARNING, warning, "CONFIG SET appendonly yes (and in redis.conf)")
            )
        if settings.near_cache is not None:
            refused = near_cache_refusal(parts.client)
            if refused:
                findings.append(Finding(PROBLEM, refused, "remove CACHEKIT_NEAR_CACHE"))
            else:
                findings.append(
                    Finding(
                        WARNING,
                        "CACHEKIT_NEAR_CACHE is experimental: a memoized call may return a"
                        " value another host replaced until that write's invalidation reaches"
                        " this worker (0.1-0.2 ms on loopback at the median, tens of"
                        " milliseconds on a loaded host)",
                        "leave it off where a read just after another host's write must see"
                        " it (docs: Backends)",
                    )
                )
        if replicas and not settings.durable_writes:
            findings.append(
                Finding(
                    WARNING,
                    f"Redis has {replicas} replica(s), and CACHEKIT_REDIS_DURABLE_WRITES is 0:"
                    " replication is asynchronous, so a failover can lose the last writes a"
                    " master acknowledged (a counter then hands a number out twice). Leases"
                    " are safe (CACHEKIT_REDIS_LEASE_REPLICAS)",
                    "set CACHEKIT_REDIS_DURABLE_WRITES = 1 (a killed master loses nothing), or"
                    f" {replicas} (a planned switch-over loses nothing either; writes then wait"
                    " while a replica is missing)",
                )
            )
        for refusal in facts.refused:
            findings.append(
                Finding(
                    WARNING,
                    f"the server refused a check ({refusal}): cachekit cannot tell whether it"
                    " evicts or persists state",
                    "allow INFO and CONFIG GET to the app's Redis user, or check by hand",
                )
            )
        if socket_timeout_of(parts.client) is None:
            findings.append(
                Finding(
                    WARNING,
                    "the app's own Redis client waits forever for a reply: a plain cache.get"
                    " hangs while Redis does not answer (cachekit's helpers use a client of"
                    " their own, with CACHEKIT_REDIS_TIMEOUT)",
                    'set CACHE_OPTIONS={"socket_timeout": 5, "socket_connect_timeout": 1}',
                )
            )
        return findings

    def _hold(
        self, domain: int, names: Collection[str], timeout: float | None, what: str
    ) -> AbstractContextManager[int]:
        if self._locks.cluster and domain == KEYS:
            if len({self._locks.stripe(KEYS, name) for name in names}) > 1:
                raise InvalidArgument(
                    f"on a Redis Cluster the keys of one transaction must share a hash slot:"
                    f" give {sorted(names)} a common {{hash tag}}, or put one in"
                    " CACHE_KEY_PREFIX",
                    key=sorted(names)[0],
                )
        return super()._hold(domain, names, timeout, what)

    # -- hooks ---------------------------------------------------------------

    def _loads(self, raw: bytes) -> Any:
        if self.form is not None:  # signed: checked before anything is unpickled
            return self.form.decode(raw)
        if not self._default_serializer:
            return self._serializer.loads(raw)
        return pickle.loads(raw[1:]) if raw.startswith(b"!") else int(raw)

    def _load(self, key: str) -> Entry | None:
        full_key = self._key(key)
        with translated(f"reading key {key!r}", key):
            raw = once_more_if_cut_off(self._client.get, full_key)
        if raw is None:
            return None
        return Entry(self._decode(key, raw), KEEP, raw)

    def _load_many(self, keys: list[str]) -> list[Entry | None]:
        """One ``MGET``; on a Cluster one ``GET`` per key (its keys lie in different slots)."""
        if self._locks.cluster or len(keys) == 1:
            return [self._load(key) for key in keys]
        with translated(f"reading keys {keys!r}", keys[0]):
            raws = once_more_if_cut_off(self._client.mget, [self._key(key) for key in keys])
        return [
            None if raw is None else Entry(self._decode(key, raw), KEEP, raw)
            for key, raw in zip(keys, raws, strict=True)
        ]

    def _dumps(self, value: Any) -> bytes | None:
        if self.form is not None:
            return self.form.encode(value)  # type: ignore[no-any-return]
        raw = self._serializer.dumps(value)
        return raw if raw is None or isinstance(raw, bytes) else str(raw).encode()

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        changed = [*writes, *deletes]
        fenced = self._locks.fence({self._locks.stripe(KEYS, key) for key in changed})
        keys, args = encode_commit(
            fenced,
            [self._key(key) for key in changed],
            {self._key(key): Write(raw, _ttl(expires)) for key, (raw, expires) in writes.items()},
            {self._key(key) for key in deletes},
            {
                self._key(key): (None if old is None else Read(True, old.raw))
                for key, old in read.items()
                if key in writes or key in deletes
            },
        )
        replicas = self._locks.replicas
        with translated(f"writing keys {sorted(changed)!r}"):
            outcome, confirmed = self._replication.run(self._scripts.commit, keys, args, replicas)
        if outcome[0] == 0:
            raise LeaseLost(
                "a lease was lost before the commit (another holder took it, or Redis lost"
                " it); nothing was written",
                name=keys[0],
            )
        if outcome[0] == 1:
            self._replication.confirm(confirmed, replicas, f"writing keys {sorted(changed)!r}")
        if outcome[0] == 2:
            key = changed[int(outcome[1]) - 1]
            raise ConcurrentUpdateError(
                f"key {key!r} was changed while the transaction held it, by an incr or a"
                " plain cache.set (on Redis these do not wait for transactions); nothing"
                " was written",
                key=key,
                attempts=1,
            )

    # -- native operations ---------------------------------------------------

    def incr(self, key: str, delta: int, timeout: Timeout) -> int:
        """Native ``INCRBY``: one command, one round trip (a script when a timeout is given)."""
        check_delta(delta, check_key(key))
        local = self._local.__dict__
        if local.get("busy"):
            self._refuse_nesting(local["busy"], (key,))
        ttl = 0 if timeout is None else _ttl_of(seconds(timeout))
        full_key = self._key(key)
        if not local.get("flushing"):
            self.stats.count("operations:incr")
        try:
            durable = self._durable_writes
            if not durable:  # one INCRBY, one round trip
                if not ttl:
                    return int(self._client.incrby(full_key, delta))
                return int(self._scripts.incr_expire(keys=[full_key], args=[delta, ttl]))
            if not ttl:
                value, confirmed = self._replication.command(
                    ("INCRBY", full_key, delta), full_key, durable
                )
            else:
                value, confirmed = self._replication.run(
                    self._scripts.incr_expire, [full_key], [delta, ttl], durable
                )
            self._replication.confirm(confirmed, durable, f"incrementing key {key!r}", key)
            return int(value)
        except RESPONSE_ERRORS as error:
            if "not an integer" in str(error) or "out of range" in str(error):
                raise self._not_an_int(key, delta) from None
            with translated(f"incrementing key {key!r}", key):
                raise
        except CLIENT_ERRORS:
            with translated(f"incrementing key {key!r}", key):
                raise
        finally:
            self._finished()

    def _not_an_int(self, key: str, delta: int) -> ValueTypeError:
        found = self._load(key)
        what = f"a {type(found.value).__name__}" if found is not None else "nothing"
        if found is not None and isinstance(found.value, int):
            what = f"{found.value}, which Redis cannot add {delta} to within 64 bits"
        return ValueTypeError(
            f"key {key!r} holds {what}, not an int: incr cannot add to it", key=key
        )

    def update(self, key: str, fn: Callable[[Any], T], default: Any, timeout: Timeout) -> T:
        check_key(key)
        ttl = _ttl_of(seconds(timeout))
        number = self._locks.stripe(KEYS, key)
        full_key = self._key(key)
        wait = self.settings.key_wait
        backoff = Backoff(MIN_POLL, MAX_POLL, time.monotonic() + wait)
        attempts = 0
        self._started("update")
        try:
            with self._busy((key,)), ExitStack() as lease:
                old = self._load(key)
                while True:
                    new = fn(copy.deepcopy(default) if old is None else old.value)
                    raw = self._encode(key, new)
                    read = ("1", old.raw) if old is not None else ("0", b"")
                    lock_key, token = self._locks.key_and_token(number)
                    with translated(f"updating key {key!r}", key):
                        outcome, confirmed = self._replication.run(
                            self._scripts.compare_and_set,
                            [full_key, lock_key],
                            [*read, raw, ttl, token],
                            self._durable_writes,
                        )
                    if outcome[0] == 1:
                        self._replication.confirm(
                            confirmed, self._durable_writes, f"updating key {key!r}", key
                        )
                        return new
                    if outcome[0] == 0:  # changed since read: try again on the value it holds now
                        attempts += 1
                        self.stats.count("retries")
                        if attempts >= MAX_ATTEMPTS:
                            raise ConcurrentUpdateError(
                                f"key {key!r} changed under each of {attempts} attempts to update"
                                " it; nothing was written",
                                key=key,
                                attempts=attempts,
                            )
                        current = outcome[1]
                        old = (
                            None
                            if current is None
                            else Entry(self._decode(key, current), KEEP, current)
                        )
                        # No pause: the reply carries the current value, and on this
                        # oversubscribed kind of machine a pause costs more than a retry.
                        if attempts == OPTIMISTIC_ATTEMPTS:
                            # Losing race after race: lease the key, as a transaction does, so
                            # that other updaters wait and the next attempt wins.
                            lease.enter_context(self._hold(KEYS, (key,), wait, f"key {key!r}"))
                            old = self._load(key)
                        continue
                    if token:  # this caller's own lease was taken over meanwhile
                        raise LeaseLost(
                            f"the lease on key {key!r} was taken over while this update held"
                            " it (paused or cut off until it ran out); nothing was written",
                            name=lock_key,
                        )
                    # Another holder's lease covers the key (a transaction at work): wait,
                    # asking only who holds it, and run fn again once it is free. A holder
                    # proven dead: take the lease, which frees it at once.
                    holder = _text(outcome[1])
                    while holder:
                        if holder_is_dead(holder):
                            lease.enter_context(self._hold(KEYS, (key,), wait, f"key {key!r}"))
                            break
                        if not backoff.sleep():
                            raise LockTimeout(
                                f"could not update key {key!r} within {wait} s: a transaction"
                                " holds it",
                                name=key,
                                timeout=wait,
                            )
                        with translated(f"waiting for key {key!r}", key):
                            holder = _text(self._scripts.holder(keys=[lock_key], args=[""]))
                    old = self._load(key)
        finally:
            self._finished()


def near_cache_refusal(client: Any) -> str | None:
    """Why the near cache cannot be kept true on the deployment ``client`` talks to, or None.

    A Cluster would need a tracking connection per node. Under Sentinel the
    tracking connection stays on a master that was replaced until the
    sentinels demote it (seconds after a switch-over), while the other hosts
    write to the new master: its hits would be stale for that long.
    """
    if is_cluster_client(client):
        return (
            "CACHEKIT_NEAR_CACHE is not supported on a Redis Cluster yet (it would need one"
            " tracking connection per node); remove it, or use RedisCache"
        )
    if sentinel_service(client) is not None:
        return (
            "CACHEKIT_NEAR_CACHE is not supported under Sentinel yet: after a switch-over the"
            " tracking connection stays on the replaced master for seconds, and hits would"
            " serve values the new master has replaced; remove it, or use RedisCache"
        )
    return None


def _near_cache(strategy: RedisStrategy, client: Any, settings: Settings, cluster: bool) -> Any:
    """The strategy's near cache if ``CACHEKIT_NEAR_CACHE`` asks for one (see the refusals)."""
    if settings.near_cache is None:
        return None
    refused = near_cache_refusal(client)
    if refused:
        raise ConfigurationError(refused, setting="CACHEKIT_NEAR_CACHE")
    from .near import NearCache

    with translated("connecting to Redis"):
        own = bounded_redis_client(
            client, settings.redis_timeout, settings.redis_connect_timeout, quick=False
        )
    near = NearCache(own, settings.near_cache, strategy._key, strategy._decode, strategy._load_many)
    weakref.finalize(strategy, _close_quietly, own)
    return near


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else ""


def _close_quietly(*clients: Any) -> None:
    for client in clients:
        try:
            client.close()
        except Exception:  # at exit, or in a child whose parent owns the sockets
            log.debug("could not close cachekit's Redis client", exc_info=True)


def _ttl(expires: int) -> str:
    """A stored expiry as the scripts' ttl argument: '' keep, '0' none, else milliseconds."""
    if expires == KEEP:
        return ""
    if expires == 0:
        return "0"
    return str(max(1, int((expires - time.time()) * 1000)))


def _ttl_of(timeout: float | None) -> str:
    if timeout is None:
        return ""
    absolute_expiry(timeout)  # the same bounds as every backend
    return "0" if timeout == 0 else str(max(1, math.ceil(timeout * 1000)))
