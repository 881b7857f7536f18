"""RedisCache: the same contract across hosts, with Redis's own primitives.

How each operation works here:

- ``incr``: a bare ``INCRBY``, one command, so that the value stays the plain
  ASCII integer cachelib stores and ``cache.get`` reads (with a timeout, a
  script that runs ``INCRBY`` then sets the TTL). It takes no lease.
- ``update``: optimistic. Read the value, run ``fn`` locally, then one script
  writes the new value only if the stored one is still what was read and no
  one else leases the key's stripe; otherwise it answers with the value now
  stored, and ``fn`` runs again on that, without a pause (a conflict costs
  one round trip, no extra read). After :data:`OPTIMISTIC_ATTEMPTS` lost
  races the caller leases the key, so that it wins the next one; after
  :data:`MAX_ATTEMPTS` it raises
  :class:`~cachekit.errors.ConcurrentUpdateError`. ``fn`` may therefore run
  more than once: on Redis it must not have side effects.
- ``transaction``, ``lock``, ``get_or_compute``: leases on stripes (the generic
  operations of :mod:`cachekit.strategy` over :class:`RedisLeases`). A
  transaction commits every key in one script that first checks that each
  lease is still its own and that no key it writes was changed by a writer
  that takes no lease (``incr``, a plain ``cache.set``); so all keys are
  written or none, and a concurrent ``incr`` is never overwritten (the
  transaction raises ConcurrentUpdateError instead).

Leases: a stripe is locked by ``SET cachekit:lock:<prefix><stripe> <token> NX
PX <lease>``. The token starts with the Redis client id of a connection the
holder's process keeps open, parked in a BLPOP that never returns (a blocked
client is never closed for idleness): a waiter that finds that connection gone
(the kernel closes it when the process dies, even by kill -9) deletes the
lease and goes on at once; a holder whose host is lost frees the lock when the lease
runs out. A holder that is alive renews its leases from a background thread every third
of the lease (the thread runs while the process holds leases), so it is not
overtaken while it works; release and renewal
compare the token first, so they never touch someone else's lease. The lock
keys sit outside the cache's key prefix, so ``cache.clear()`` does not remove
a lease in use.

Values use the backend's own serializer and ``CACHE_KEY_PREFIX`` exactly as
cachelib applies them; reads and writes go to the backend's write client (the
master, under Sentinel). Expiry: ``timeout=None`` keeps a key's remaining TTL
(``KEEPTTL``), a number sets it relative to the server's clock. Redis 6.2 or
later is assumed. On a Redis Cluster a key's lock lives in the key's hash slot
(see :class:`RedisLeases`), and a transaction's keys must share one slot.

Connections: redis-py's pool opens new connections in a forked child, so a
client created before gunicorn forks (``--preload``) is never shared. While
Redis is unreachable every operation raises
:class:`~cachekit.errors.StorageError`; service resumes when it is back.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import pickle
import random
import secrets
import select
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Final, TypeVar

import redis
from cachelib.serializers import BaseRedisSerializer
from redis.crc import key_slot

from . import strategy
from .errors import (
    ConcurrentUpdateError,
    InvalidArgument,
    LeaseLost,
    LockTimeout,
    StorageError,
    ValueTypeError,
)
from .strategy import (
    Entry,
    Strategy,
    Timeout,
    absolute_expiry,
    check_delta,
    check_key,
    seconds,
)
from .threadlocks import KEYS, STRIPES, StripedLocks

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Lease of a lock, in seconds: how long a dead holder can block the others.
LEASE_SECONDS: Final = 10.0
#: Tries of an update without a lease; after these it leases the key and tries again.
OPTIMISTIC_ATTEMPTS: Final = 16
#: Most tries of an update in all before ConcurrentUpdateError (only writers that take
#: no lease, a native incr or a plain cache.set, can make it fail while it holds the lease).
MAX_ATTEMPTS: Final = 100
#: Stored expiry meaning "keep the key's current TTL" (Redis reports no absolute time).
KEEP: Final = -1

#: How often, in seconds, a lease's waiter checks that the holder's process still lives.
HOLDER_CHECK: Final = 0.05
#: How often, in seconds, a process without a presence connection tries to open one.
PRESENCE_RETRY: Final = 5.0
#: Back-off of a lease's waiter: from MIN_POLL, doubling, up to MAX_POLL seconds.
MIN_POLL: Final = 0.0001
MAX_POLL: Final = 0.005

_SET_WITH_TTL = """
local function store(key, raw, ttl)
  if ttl == '' then redis.call('SET', key, raw, 'KEEPTTL')
  elseif ttl == '0' then redis.call('SET', key, raw)
  else redis.call('SET', key, raw, 'PX', ttl) end
end
"""

# KEYS: value. ARGV: delta, ttl ('0' none, else milliseconds). For incr with a
# timeout: INCRBY fails first on a non-integer, so nothing else is changed then.
INCR_AND_EXPIRE = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] == '0' then redis.call('PERSIST', KEYS[1])
else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""

# KEYS: value, lock of its stripe. ARGV: '1' if a value was read, the raw value
# read, the new raw value, ttl, caller's token or ''. Returns {1} written,
# {0, current raw value or nil} changed since read, {-1} leased by another holder.
COMPARE_AND_SET = (
    _SET_WITH_TTL
    + """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[5] then return {-1} end
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return {0, current} end
elseif current then return {0, current} end
store(KEYS[1], ARGV[3], ARGV[4])
return {1}
"""
)

# KEYS: n lock keys, then the value keys. ARGV: n, the n tokens, then per value
# key: what was read ('-' nothing to check, '0' missing, '1' this raw value),
# the raw value read, 'd' (delete) or 's' (set) and for 's' the raw value and
# ttl. Returns {1} all written; {0} a lease is lost; {2, i} value key i changed
# since it was read (an INCRBY or a plain SET, which take no lease). In the
# last two cases nothing is written.
COMMIT = (
    _SET_WITH_TTL
    + """
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return {0} end
end
local a = n + 2
for i = n + 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if (ARGV[a] == '0' and current) or (ARGV[a] == '1' and current ~= ARGV[a + 1]) then
    return {2, i - n}
  end
  a = a + (ARGV[a + 2] == 'd' and 3 or 5)
end
a = n + 2
for i = n + 1, #KEYS do
  if ARGV[a + 2] == 'd' then
    redis.call('DEL', KEYS[i])
    a = a + 3
  else
    store(KEYS[i], ARGV[a + 3], ARGV[a + 4])
    a = a + 5
  end
end
return {1}
"""
)

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@contextmanager
def translated(doing: str, key: str | None = None) -> Iterator[None]:
    """Turn redis-py's errors into :class:`StorageError`, in one place."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        raise StorageError(f"Redis is unreachable while {doing}: {error}", key=key) from error
    except redis.exceptions.RedisError as error:
        raise StorageError(f"Redis failed while {doing}: {error}", key=key) from error


class LuaScript:
    """A server-side script called by its SHA1, loaded again after a Redis restart."""

    def __init__(self, client: Any, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._client.evalsha(self._sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(self._source)
            return self._client.evalsha(self._sha, len(keys), *keys, *args)


def _backoff(delay: float, deadline: float) -> float:
    """Sleep a jittered, growing delay (at most until ``deadline``); return the next one."""
    delay = min(MAX_POLL, delay * 2 or MIN_POLL)
    time.sleep(max(0.0, min(delay * random.uniform(0.5, 1.5), deadline - time.monotonic())))
    return delay


class RedisLeases(StripedLocks):
    """Striped locks that exclude threads of this process and every process on every host.

    On a Redis Cluster the stripes of stored keys are the cluster's hash slots,
    and each slot's lock key carries a hash tag of that slot: a script that
    touches a key and its lock then runs on one node, as Cluster requires.
    """

    def __init__(self, client: Any, prefix: Callable[[], str], *, cluster: bool = False) -> None:
        super().__init__()
        self._client = client
        self._prefix = prefix
        self.cluster = cluster
        self.lease = LEASE_SECONDS
        self._tokens: dict[int, str] = {}  # stripes this process holds -> their tokens
        self._lost: set[int] = set()  # held stripes whose lease could not be renewed
        self._renewer_pid = 0  # the process whose renewer thread runs, 0 for none
        self._renewing = threading.Lock()
        self._presence_pid = 0  # the process whose presence connection is open
        self._presence_id = ""
        self._presence_connection: Any = None
        self._presence_retry_at = 0.0
        self._release = LuaScript(client, RELEASE)
        self._renew = LuaScript(client, RENEW)

    def stripe(self, domain: int, name: str) -> int:
        if self.cluster and domain == KEYS:
            return KEYS * STRIPES + key_slot(f"{self._prefix()}{name}".encode())
        return super().stripe(domain, name)

    def key(self, number: int) -> str:
        if self.cluster and number >= KEYS * STRIPES:
            return f"cachekit:lock:{{{tag_of_slot(number - KEYS * STRIPES)}}}:{self._prefix()}"
        return f"cachekit:lock:{self._prefix()}{number}"

    def key_and_token(self, number: int) -> tuple[str, str]:
        """The lock key of stripe ``number`` and this thread's token ('' if not its holder)."""
        token = self._tokens.get(number, "") if self.held_by_this_thread(number) else ""
        return self.key(number), token

    def fence(self, numbers: Collection[int]) -> list[tuple[str, str]]:
        """The (lock key, token) of held stripes, to check at commit; raises if one is lost."""
        fenced = []
        for number in sorted(numbers):
            key, token = self.key_and_token(number)
            if not token or number in self._lost:
                raise LeaseLost(
                    f"the lease on stripe {number} ran out before the commit; nothing was"
                    " written (was Redis unreachable for longer than the lease?)",
                    name=key,
                )
            fenced.append((key, token))
        return fenced

    def _acquire_outer(self, number: int, deadline: float | None) -> bool:
        token, key = f"{self._presence()}.{secrets.token_hex(12)}", self.key(number)
        delay = 0.0
        check_holder_at = time.monotonic() + HOLDER_CHECK
        while True:
            with translated(f"taking the lock {key}"):
                taken = self._client.set(key, token, nx=True, px=int(self.lease * 1000))
            if taken:
                self._tokens[number] = token
                self._lost.discard(number)
                self._start_renewer()
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now >= check_holder_at:
                check_holder_at = now + HOLDER_CHECK
                if self._free_if_holder_died(key):
                    continue
            delay = _backoff(delay, math.inf if deadline is None else deadline)

    def _presence(self) -> str:
        """The Redis client id of a connection this process keeps open while it lives.

        A lease's token starts with it, so that a waiter can tell a holder that
        died (its connection is gone from CLIENT LIST the moment the kernel
        closes its sockets, even on kill -9) from one that is still working,
        and take the lock at once instead of after the lease. '' where the
        server refuses CLIENT commands or on a Cluster: leases then run out.
        """
        if self._presence_pid == os.getpid() and self._presence_alive():
            return self._presence_id
        with self._renewing:
            if self._presence_pid != os.getpid() or not self._presence_alive():
                self._presence_id = ""
                self._presence_connection = None
                self._presence_pid = os.getpid()
                if not self.cluster:
                    self._open_presence()
        return self._presence_id

    def _open_presence(self) -> None:
        try:
            connection = self._client.connection_pool.get_connection()
            connection.send_command("CLIENT", "ID")
            client_id = str(int(connection.read_response()))
            # Park the connection in a BLPOP that never returns: Redis never closes a
            # blocked client for idleness, so the connection lives as long as the process.
            connection.send_command("BLPOP", f"cachekit:presence:{client_id}", 0)
        except (redis.exceptions.RedisError, OSError, ValueError):
            log.info("no CLIENT ID on this server: dead holders free locks by lease")
            return
        self._presence_id = client_id
        self._presence_connection = connection  # kept open, never released to the pool

    def _presence_alive(self) -> bool:
        """Whether the parked presence connection is still open (no round trip).

        It never receives a reply, so a readable socket means the server closed
        it (a restart, CLIENT KILL): a new one is opened, under a new id.
        """
        connection = self._presence_connection
        sock = getattr(connection, "_sock", None)
        if sock is None:
            return connection is None and not self._presence_retry_due()
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def _presence_retry_due(self) -> bool:
        """Without a presence connection, try to open one again now and then."""
        now = time.monotonic()
        if now < self._presence_retry_at:
            return False
        self._presence_retry_at = now + PRESENCE_RETRY
        return True

    def _free_if_holder_died(self, key: str) -> bool:
        """Delete the lease at ``key`` if its holder's connection is gone; True if deleted."""
        try:
            holder = self._client.get(key)
            if not holder:
                return True
            client_id = holder.split(b".", 1)[0]
            if not client_id.isdigit() or self._client.client_list(client_id=[client_id]):
                return False
            self._release([key], [holder])
            return True
        except redis.exceptions.RedisError:
            return False

    def _release_outer(self, number: int) -> None:
        token = self._tokens.pop(number, None)
        self._lost.discard(number)
        if token:
            try:
                self._release([self.key(number)], [token])
            except redis.exceptions.RedisError:
                log.warning("could not release %s; its lease will run out", self.key(number))

    def _start_renewer(self) -> None:
        """Make sure this process renews its leases; called after a lease is recorded.

        The renewer stops when it finds no lease held. It decides so, and this
        method decides to start one, under the same lock, after the lease is in
        ``_tokens``: a new lease is never left without a renewer.
        """
        if self._renewer_pid == os.getpid():
            return
        with self._renewing:
            if self._renewer_pid != os.getpid():
                self._renewer_pid = os.getpid()
                threading.Thread(
                    target=self._renew_while_held, name="cachekit-leases", daemon=True
                ).start()

    def _renew_while_held(self) -> None:
        pid = os.getpid()
        while self._renewer_pid == pid:
            time.sleep(self.lease / 3)
            held = list(self._tokens.items())
            if not held:
                with self._renewing:
                    if not self._tokens:
                        self._renewer_pid = 0
                        return
                continue
            try:
                renewed = [
                    self._renew([self.key(number)], [token, int(self.lease * 1000)])
                    for number, token in held
                ]
            except redis.exceptions.RedisError as error:
                log.warning("could not renew cachekit leases: %s", error)
                continue
            for (number, token), ok in zip(held, renewed, strict=True):
                if not ok and self._tokens.get(number) == token:
                    self._lost.add(number)

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        sock = getattr(self._presence_connection, "_sock", None)
        if sock is not None:  # the parent's: close this copy only (no shutdown, which is shared)
            sock.close()
        self._presence_connection = None
        self._presence_pid = 0
        self._tokens = {}
        self._lost = set()
        self._renewer_pid = 0
        self._renewing = threading.Lock()


def _held_by_transaction(key: str, doing: str) -> LockTimeout:
    return LockTimeout(
        f"could not {doing} key {key!r} within {strategy.KEY_WAIT} s: a transaction holds it",
        name=key,
        timeout=strategy.KEY_WAIT,
    )


_slot_tags: list[str] = []


def tag_of_slot(slot: int) -> str:
    """A short hash tag whose keys land in cluster hash slot ``slot`` (a table made once)."""
    if not _slot_tags:
        tags: dict[int, str] = {}
        candidate = 0
        while len(tags) < 16384:
            tag = f"ck{candidate}"
            tags.setdefault(key_slot(tag.encode()), tag)
            candidate += 1
        _slot_tags.extend(tags[number] for number in range(16384))
    return _slot_tags[slot]


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


class RedisStrategy(Strategy):
    """Atomic operations on a cachelib / Flask-Caching ``RedisCache`` (and Sentinel)."""

    name = "RedisCache"
    _locks: RedisLeases

    def __init__(self, backend: Any) -> None:
        client = backend._write_client
        cluster = isinstance(client, redis.RedisCluster)
        super().__init__(backend, RedisLeases(client, backend._get_prefix, cluster=cluster))
        self._client = client
        kind = type(backend.serializer)
        self._default_serializer = (
            kind.dumps is BaseRedisSerializer.dumps and kind.loads is BaseRedisSerializer.loads
        )
        self._incr_and_expire = LuaScript(client, INCR_AND_EXPIRE)
        self._compare_and_set = LuaScript(client, COMPARE_AND_SET)
        self._commit_script = LuaScript(client, COMMIT)

    def _key(self, key: str) -> str:
        return f"{self.backend._get_prefix()}{key}"

    def _hold(
        self, domain: int, names: Collection[str], timeout: float | None, what: str
    ) -> AbstractContextManager[None]:
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
        if not self._default_serializer:
            return self.backend.serializer.loads(raw)
        return pickle.loads(raw[1:]) if raw.startswith(b"!") else int(raw)

    def _load(self, key: str) -> Entry | None:
        with translated(f"reading key {key!r}", key):
            raw = self._client.get(self._key(key))
        if raw is None:
            return None
        return Entry(self._decode(key, raw), KEEP, raw)

    def _dumps(self, value: Any) -> bytes | None:
        raw = self.backend.serializer.dumps(value)
        return raw if raw is None or isinstance(raw, bytes) else str(raw).encode()

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        changed = [*writes, *deletes]
        fenced = self._locks.fence({self._locks.stripe(KEYS, key) for key in changed})
        keys = [lock for lock, _ in fenced]
        args: list[Any] = [len(fenced), *(token for _, token in fenced)]
        for key in changed:
            keys.append(self._key(key))
            if key not in read:
                args += ["-", b""]
            else:
                old = read[key]
                args += ["0", b""] if old is None else ["1", old.raw]
            if key in writes:
                raw, expires = writes[key]
                args += ["s", raw, _ttl(expires)]
            else:
                args.append("d")
        with translated(f"writing keys {sorted(changed)!r}"):
            outcome = self._commit_script(keys, args)
        if outcome[0] == 0:
            raise LeaseLost(
                "a lease ran out before the commit (another holder took it); nothing was written",
                name=keys[0],
            )
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
        self._refuse_nesting(self._local.__dict__.get("busy"), (key,))
        ttl = _ttl_of(seconds(timeout))
        full_key = self._key(key)
        self._started("incr")
        try:
            if not ttl:
                return int(self._client.incrby(full_key, delta))
            return int(self._incr_and_expire([full_key], [delta, ttl]))
        except redis.exceptions.ResponseError as error:
            if "not an integer" in str(error) or "out of range" in str(error):
                raise self._not_an_int(key, delta) from None
            with translated(f"incrementing key {key!r}", key):
                raise
        except redis.exceptions.RedisError:
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
        deadline = time.monotonic() + strategy.KEY_WAIT
        delay = 0.0
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
                        outcome = self._compare_and_set(
                            [full_key, lock_key], [*read, raw, ttl, token]
                        )
                    if outcome[0] == 1:
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
                            lease.enter_context(
                                self._hold(KEYS, (key,), strategy.KEY_WAIT, f"key {key!r}")
                            )
                            old = self._load(key)
                        continue
                    if time.monotonic() >= deadline:
                        raise _held_by_transaction(key, "update")
                    delay = _backoff(delay, deadline)
                    old = self._load(key)
        finally:
            self._finished()
