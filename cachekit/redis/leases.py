"""Leases: striped locks that exclude every thread of every process on every host.

A stripe is locked by a *lease*, a key ``cachekit:lock:...`` holding
``"<expiry in server ms> <token>"`` (``acquire.lua``). How it keeps its promises:

- **No eviction.** A lease has no Redis TTL, so the ``volatile-*`` eviction
  policies never drop it; its expiry is read by the scripts against the
  server's clock. (``allkeys-*`` policies with ``maxmemory`` are refused at
  first use: see :mod:`cachekit.redis.server`.)
- **A live holder is never overtaken.** Its process renews all its leases
  every third of the lease from a background thread (a greenlet under
  gevent); a lost connection is reopened and changes nothing, since nothing
  depends on a connection.
- **A dead holder is freed at once only on proof.** A token names the
  holder's machine (boot id and pid namespace), its pid and the pid's start
  time. A waiter on the same machine that finds that process gone (or the
  pid reused) takes the lease at once (``ARGV[3]`` of ``acquire.lua``); a
  holder on another machine is waited for until its lease ends.
- **A holder that lost its lease is told.** A holder paused past its lease
  can be overtaken; renewal, release and commit compare the token first, so
  they never touch another's lease, and releasing a lease that is no longer
  its own makes ``lock()`` raise :class:`~cachekit.errors.LeaseLost`. A lease
  past its expiry that still holds the token was taken by no one, so it is
  still good. If the release cannot reach Redis, the lease is known to have
  held only if it was renewed less than a lease ago.
- **Fencing.** A grant of a ``lock()`` stripe returns a token from a counter
  beside the lease (no TTL), raised to the server's time in microseconds, so
  it increases with every grant even after the counter was lost.
- **Replicas confirm.** With ``replicas`` > 0 (``CACHEKIT_REDIS_LEASE_REPLICAS``
  on a replicated deployment, or ``CACHEKIT_REDIS_DURABLE_WRITES``) a grant,
  renewal or release counts only once that many replicas acknowledged it
  (``WAIT``, :mod:`cachekit.redis.replication`): a master that was replaced
  but not yet told, or that lost its replicas, grants nothing that counts. A
  grant not confirmed is given back and tried again until the caller's
  deadline (then :class:`~cachekit.errors.StorageError`); a renewal not
  confirmed refreshes nothing; a release not confirmed makes ``lock()`` raise
  :class:`~cachekit.errors.LeaseLost`, since the master that counts may never
  have had the lease. A confirmed grant is on whichever replica Sentinel
  promotes, so its token is never handed out again there, and the server's
  clock keeps later tokens larger.
- **A release that did not land is tried again** in the background (the
  master was replaced or unreachable) until it is confirmed or the lease has
  run out, so that a replaced master's copy of the lease does not keep others
  waiting for a whole lease.

On a Redis Cluster the stripes of stored keys are the cluster's hash slots,
and every lock key carries a hash tag, so that a script touching a key and
its lock (or a lease and its fencing counter) runs on one node.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Final

from redis.crc import key_slot

from ..errors import LeaseLost, StorageError
from ..settings import Settings
from ..threadlocks import KEYS, LOCKS, STRIPES, PerProcessValue, StripedLocks
from ..waiting import Backoff
from .replication import Replication
from .scripts import Scripts
from .translate import once_more_if_cut_off, translated

log = logging.getLogger(__name__)

#: How often, in seconds, a waiter checks whether a lease's holder process still lives.
HOLDER_CHECK: Final = 0.05
#: Back-off of a lease's waiter: from MIN_POLL, doubling, up to MAX_POLL seconds.
MIN_POLL: Final = 0.0001
MAX_POLL: Final = 0.005


# -- who holds a lease -----------------------------------------------------------


def _machine() -> str:
    """This machine and pid namespace, as a short id; '' where /proc cannot prove deaths."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        with open("/proc/self/stat") as own:  # /proc must show this pid namespace
            if int(own.read().split(" ", 1)[0]) != os.getpid():
                return ""
    except (OSError, ValueError):
        return ""
    return hashlib.sha1(f"{boot_id}:{namespace}".encode()).hexdigest()[:16]


GONE: Final = "gone"


def _started(pid: int) -> str | None:
    """The start time (clock ticks since boot) of process ``pid``, :data:`GONE`, or None.

    :data:`GONE` only on proof: no ``/proc/<pid>`` *and* ``kill(pid, 0)`` finds
    no such process, or a zombie. None when it cannot be told (``/proc``
    hides other users' processes under ``hidepid`` or a security module, an
    unreadable or odd file): the caller must then take the process as alive.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except FileNotFoundError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return GONE
        except OSError:  # EPERM: it exists, as another user's process
            return None
        return None  # it exists, but /proc does not show it
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[-1].split()  # the name before ")" may hold anything
    if len(fields) < 20:
        return None
    if fields[0] in (b"Z", b"X") and _threads(pid) <= 1:  # a zombie renews nothing
        return GONE
    return fields[19].decode("ascii", "replace")


def _threads(pid: int) -> int:
    """How many threads ``pid`` has (a zombie main thread may leave others running)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 2  # unknown: not provably gone


MACHINE: Final = _machine()


def _process_identity() -> str:
    """``<machine>.<pid>.<start time>`` of this process ('' parts where unknown)."""
    pid = os.getpid()
    started = _started(pid)
    return f"{MACHINE}.{pid}.{started if started not in (None, GONE) else ''}"


def holder_is_dead(token: str) -> bool:
    """Whether ``token``'s process is proven gone: on this machine, and no longer running.

    Only a token from this machine (same boot, same pid namespace) can be
    judged; any other holder counts as alive until its lease ends.
    """
    parts = token.split(".")
    if len(parts) != 4 or not MACHINE or parts[0] != MACHINE or not parts[2]:
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    started = _started(pid)
    return started is not None and started != parts[2]  # gone, or the pid reused


# -- the locks ---------------------------------------------------------------------


class RedisLeases(StripedLocks):
    """Striped locks held as leases in Redis (see the module's docstring)."""

    def __init__(
        self,
        scripts: Scripts,
        prefix: Callable[[], str],
        settings: Settings,
        *,
        renewal_scripts: Scripts | None = None,
        cluster: bool = False,
        replication: Replication | None = None,
        renewal_replication: Replication | None = None,
        replicas: int = 0,
    ) -> None:
        super().__init__()
        self._scripts = scripts
        #: Replicas that must confirm each grant, renewal and release (0: none asked).
        self.replicas = replicas if replication is not None else 0
        self._replication = replication
        self._renewal_replication = renewal_replication or replication
        #: Renewals go through a client whose replies are awaited a fraction of the lease,
        #: so that a renewal cut off can be tried again before the lease runs out.
        self._renewal_scripts = renewal_scripts or scripts
        self._prefix = prefix
        self.settings = settings
        self.cluster = cluster
        self._identity = PerProcessValue(_process_identity)
        self._tokens: dict[int, str] = {}  # stripes this process holds -> their tokens
        self._renewed: dict[int, float] = {}  # -> monotonic time the last grant or renewal was sent
        self._lost: set[str] = set()  # tokens of held leases a renewal found taken or erased
        #: Tokens this process released (or gave back), -> monotonic time: for a lease after
        #: that, a copy of one of them on a new master holds nothing, and is taken over.
        self._released: dict[str, float] = {}
        self._renewer = 0  # generation (pid) whose renewer runs; 0 for none
        self._renewer_lock = PerProcessValue(lambda: threading.Lock())

    # -- naming ----------------------------------------------------------------

    def stripe(self, domain: int, name: str) -> int:
        if self.cluster and domain == KEYS:
            return KEYS * STRIPES + key_slot(f"{self._prefix()}{name}".encode())
        return super().stripe(domain, name)

    def _tag(self, number: int) -> str:
        if not self.cluster:
            return f"{self._prefix()}{number}"
        if number >= KEYS * STRIPES:
            return f"{{{tag_of_slot(number - KEYS * STRIPES)}}}:{self._prefix()}"
        return f"{{cl{number}}}:{self._prefix()}"  # never a tag of tag_of_slot ("ck...")

    def key(self, number: int) -> str:
        """The lease key of stripe ``number``."""
        return f"cachekit:lock:{self._tag(number)}"

    def fence_key(self, number: int) -> str:
        """The fencing counter of stripe ``number`` (same hash slot as its lease)."""
        return f"cachekit:fence:{self._tag(number)}"

    def key_and_token(self, number: int) -> tuple[str, str]:
        """The lease key of stripe ``number`` and this thread's token ('' if not its holder)."""
        token = self._tokens.get(number, "") if self.held_by_this_thread(number) else ""
        return self.key(number), token

    def fence(self, numbers: Collection[int]) -> list[tuple[str, str]]:
        """(lease key, token) of held stripes, for a commit to check; raises if one is lost."""
        fenced = []
        for number in sorted(numbers):
            key, token = self.key_and_token(number)
            if not token or token in self._lost:
                raise LeaseLost(
                    f"the lease {key} was lost before the commit (another holder took it, or"
                    " Redis lost it); nothing was written",
                    name=key,
                )
            fenced.append((key, token))
        return fenced

    # -- the hooks of StripedLocks ----------------------------------------------

    def _acquire_outer(self, number: int, deadline: float | None) -> int | None:
        key = self.key(number)
        keys = [key, self.fence_key(number)] if number // STRIPES == LOCKS else [key]
        token = f"{self._identity.get()}.{secrets.token_hex(8)}"
        lease_ms = int(self.settings.lease * 1000)
        backoff = Backoff(MIN_POLL, MAX_POLL, deadline)
        dead = ""
        check_at = time.monotonic() + HOLDER_CHECK
        while True:
            sent = time.monotonic()
            try:
                with translated(f"taking the lock {key}"):
                    (granted, detail), confirmed = once_more_if_cut_off(
                        self._run, self._scripts.acquire, keys, [token, lease_ms, dead]
                    )
            except StorageError:
                # The grant may have landed with its reply lost: release it, but not on the
                # caller's time (a server that does not answer would cost a second timeout).
                threading.Thread(target=self._forget, args=(key, token), daemon=True).start()
                raise
            if granted and confirmed >= self.replicas:
                self._tokens[number] = token
                self._renewed[number] = sent
                self._start_renewer()
                return int(detail)
            if granted:  # on a master that cannot show it on enough replicas: it does not count
                self._forget(key, token)
                self._note_released(token)
                token = f"{self._identity.get()}.{secrets.token_hex(8)}"
                self._reconnect()
                if not backoff.sleep():
                    raise self._unconfirmed(key, confirmed)
                continue
            holder = detail.decode() if isinstance(detail, bytes) else str(detail)
            released_at = self._released.get(holder)
            if released_at is not None and time.monotonic() - released_at < self.settings.lease:
                # This process released that lease: a copy of it (a new master got it before
                # the release, which only the old master saw) holds nothing. Take it over.
                dead = holder
                continue
            if not backoff.started:
                self._contended()
            now = time.monotonic()
            if now >= check_at:
                check_at = now + HOLDER_CHECK
                if holder_is_dead(holder):
                    dead = holder
                    continue
            if not backoff.sleep():
                return None

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """``script`` on the main client, confirmed by :attr:`replicas` replicas if any."""
        if self._replication is None or not self.replicas:
            return script(keys=keys, args=args), 0
        return self._replication.run(script, keys, args, self.replicas)

    def _reconnect(self) -> None:
        for replication in {
            id(r): r for r in (self._replication, self._renewal_replication)
        }.values():
            if replication is not None:
                replication.reconnect()

    def _unconfirmed(self, key: str, confirmed: int) -> StorageError:
        return StorageError(
            f"could not take the lock {key}: the Redis master granted it, but only"
            f" {confirmed} of the {self.replicas} replicas it must reach"
            " (CACHEKIT_REDIS_LEASE_REPLICAS) confirmed it in time. The master has lost its"
            " replicas, or is being replaced (a Sentinel failover): a lease only it holds"
            " would not exclude anyone, so none is granted there",
            key=key,
        )

    def _note_released(self, token: str) -> None:
        """Remember ``token`` as released for a lease, forgetting those older than that."""
        now = time.monotonic()
        self._released[token] = now
        if len(self._released) > 64:
            for old, at in list(self._released.items()):
                if now - at > self.settings.lease:
                    self._released.pop(old, None)

    def _forget(self, key: str, token: str) -> None:
        """Release ``token``'s lease at ``key`` if it is there, quietly: the best one can do."""
        try:
            self._renewal_scripts.release(keys=[key], args=[token])
        except Exception:  # unreachable still: the lease, if granted, runs out
            log.info("could not release %s after a failed grant; it runs out", key)

    def _release_outer(self, number: int) -> bool:
        token = self._tokens.pop(number, None)
        renewed = self._renewed.pop(number, 0.0)
        if not token:
            return False
        lost = token in self._lost
        self._lost.discard(token)
        self._note_released(token)
        key = self.key(number)
        try:
            with translated(f"releasing the lock {key}"):
                released, confirmed = self._run(self._scripts.release, [key], [token])
        except StorageError as error:
            # Unreachable: exclusion held if the lease had not run out since it was renewed.
            held = time.monotonic() - renewed < self.settings.lease
            log.warning(
                "could not release %s (%s); trying again in the background until its lease"
                " would have run out%s",
                key,
                error,
                "" if held else "; it may have run out while held",
            )
            self._release_later(key, token, renewed)
            return held and not lost
        if confirmed < self.replicas:
            # This master may have been replaced: the one that counts may never have had the
            # lease (another may have held it meanwhile), and may still hold its copy.
            log.warning(
                "the release of %s was confirmed by %d of %d replicas: the lease may have been"
                " lost while held; releasing it again in the background",
                key,
                confirmed,
                self.replicas,
            )
            self._reconnect()
            self._release_later(key, token, renewed)
            return False
        return bool(released) and not lost

    def _release_later(self, key: str, token: str, renewed: float) -> None:
        """Release ``token``'s lease at ``key`` in the background, until confirmed or run out."""
        threading.Thread(
            target=self._release_until_confirmed,
            args=(key, token, renewed + self.settings.lease),
            name="cachekit-release",
            daemon=True,
        ).start()

    def _release_until_confirmed(self, key: str, token: str, until: float) -> None:
        """Try the release again and again (the master may change meanwhile) until ``until``.

        Only ever deletes the lease if it still holds ``token``: never another's.
        """
        pause = min(0.1, self.settings.lease / 20)
        while time.monotonic() < until:
            time.sleep(pause)
            try:
                replication = self._renewal_replication
                if replication is None or not self.replicas:
                    self._renewal_scripts.release(keys=[key], args=[token])
                    return
                _, confirmed = replication.run(
                    self._renewal_scripts.release, [key], [token], self.replicas
                )
                if confirmed >= self.replicas:
                    return
                replication.reconnect()
            except Exception:  # unreachable still: try again, or the lease runs out
                continue

    def still_held(self, number: int) -> bool:
        token = self._tokens.get(number)
        if not token or token in self._lost:
            return False
        with translated(f"checking the lock {self.key(number)}"):
            return bool(
                once_more_if_cut_off(
                    lambda: self._scripts.held(keys=[self.key(number)], args=[token])
                )
            )

    # -- renewal -----------------------------------------------------------------

    def _start_renewer(self) -> None:
        """Make sure this process renews its leases; called after a lease is recorded.

        The renewer stops when it finds no lease held. It decides so, and this
        method decides to start one, under the same lock, after the lease is in
        ``_tokens``: a new lease is never left without a renewer.
        """
        pid = os.getpid()
        if self._renewer == pid:
            return
        with self._renewer_lock.get():
            if self._renewer != pid:
                self._renewer = pid
                threading.Thread(
                    target=self._renew_while_held, name="cachekit-leases", daemon=True
                ).start()

    def _renew_while_held(self) -> None:
        """Renew every lease this process holds, every third of the lease, until none is held.

        Nothing stops it but that. A round that fails (Redis cut off, any error)
        is tried again at once, with a short back-off, rather than a third of a
        lease later: a holder cut off for less than about half its lease keeps it.
        """
        pid = os.getpid()
        delay = self.settings.lease / 3
        warned_at = -math.inf
        while self._renewer == pid:
            time.sleep(delay)
            delay = self.settings.lease / 3
            try:
                if not self._renew_once():
                    with self._renewer_lock.get():
                        if not self._tokens:
                            self._renewer = 0
                            return
            except Exception as error:  # a renewer that dies would let every lease run out
                if time.monotonic() - warned_at >= self.settings.lease:  # not 20 times a second
                    warned_at = time.monotonic()
                    log.warning("could not renew cachekit leases (%s); trying again", error)
                delay = min(0.1, self.settings.lease / 20)

    def _renew_once(self) -> bool:
        """Renew the held leases once; False if none is held."""
        held = list(self._tokens.items())
        if not held:
            return False
        lease_ms = int(self.settings.lease * 1000)
        groups = [[item] for item in held] if self.cluster else [held]
        failure: Exception | None = None
        for group in groups:  # one node cut off must not stop the others' renewals
            try:
                self._renew_group(group, lease_ms)
            except Exception as error:
                failure = failure or error
        if failure is not None:
            raise failure
        return True

    def _renew_group(self, group: list[tuple[int, str]], lease_ms: int) -> None:
        """Renew one group of leases (all of them, or one per Cluster node) in one call."""
        sent = time.monotonic()
        keys = [self.key(number) for number, _ in group]
        args = [lease_ms, *(token for _, token in group)]
        with translated("renewing leases"):
            if self._renewal_replication is None or not self.replicas:
                renewed = once_more_if_cut_off(self._renewal_scripts.renew, keys=keys, args=args)
            else:
                renewed, confirmed = once_more_if_cut_off(
                    self._renewal_replication.run,
                    self._renewal_scripts.renew,
                    keys,
                    args,
                    self.replicas,
                )
                if confirmed < self.replicas:  # neither renewed nor lost: this master may not count
                    self._reconnect()
                    raise StorageError(
                        f"a renewal of cachekit leases was confirmed by {confirmed} of the"
                        f" {self.replicas} replicas it must reach: the Redis master lost its"
                        " replicas or is being replaced"
                    )
        for (number, token), ok in zip(group, renewed, strict=True):
            if self._tokens.get(number) != token:
                continue  # released meanwhile
            if ok:
                self._renewed[number] = sent
            else:
                self._lost.add(token)

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._tokens = {}
        self._renewed = {}
        self._lost = set()
        self._renewer = 0


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
