"""LMDBCache: cachekit's helpers in LMDB write transactions.

How ``incr`` works here, start to end: begin a write transaction (LMDB's
writer mutex), check that no ``update`` or ``transaction`` holds the key's
stripe, read, add, put, commit. One transaction, no lock of cachekit's own.

How ``update`` works: read, run ``fn`` outside any transaction, then commit
in one short write transaction only if the stored bytes are still the ones
read and the key's stripe is free; otherwise run ``fn`` again on the new value
(so ``fn`` may run more than once, as on Redis). After a few lost races, or at
once if a holder has the stripe, take the key's stripe in the directory's lock
file (:mod:`cachekit.lockfiles`, a record lock the kernel drops when its holder
dies; waits are bounded by ``CACHEKIT_KEY_WAIT``), pass a *barrier* (begin and
abort a write transaction), read, run ``fn`` and write.

Why they meet correctly: a fast ``incr`` or optimistic ``update`` commits
only if the key's stripe is free *while it holds the writer mutex*. A holder
of the stripe marks it taken (its busy byte) before its barrier, and the
barrier waits for every write transaction already under way. So a fast writer
either committed before the barrier (and the holder reads its result) or
commits after it (and sees the stripe taken, and waits for the stripe like any
other modifier). Nothing changes a key between a holder's read and its write
except a plain ``cache.set``, which cachekit never serializes on any backend.

``transaction`` holds its keys' stripes the same way, and its write is one LMDB
transaction: all keys or none, also when the process dies in the middle.
``lock`` and the single flight of ``get_or_compute`` are stripes of the lock
file too (freed at once when their holder dies; fencing tokens are counters in
that file). Nothing here runs user code or waits inside a write transaction.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from ..errors import CachekitError, ConfigurationError
from ..filesystem import check_private_directory
from ..findings import PROBLEM, WARNING, Finding
from ..lockfiles import lock_file
from ..settings import DEFAULTS, Settings
from ..strategy import Entry, Strategy, absolute_expiry, check_delta, check_key, seconds
from ..threadlocks import KEYS
from . import store
from .backend import LMDBCache
from .store import HEADER, NETWORK_FILESYSTEMS, decode, encode, unpack

T = TypeVar("T")

#: Optimistic attempts of an update before it takes the key's stripe.
OPTIMISTIC_ATTEMPTS = 8
#: A store fuller than this is reported: past its map_size, writes fail.
LMDB_FULL_WARNING = 0.8


class LMDBStrategy(Strategy):
    """Atomic operations on an :class:`~cachekit.lmdb.backend.LMDBCache`."""

    name = "LMDBCache"
    signing = "lmdb"  # kind 3 envelopes in the store (cachekit.signing); ints stay native

    @classmethod
    def diagnose(cls, backend: LMDBCache, settings: Settings) -> list[Finding]:
        """A network file system, a directory others can write, a store that is nearly full."""
        findings = super().diagnose(backend, settings)
        directory = backend.directory
        kind = store.filesystem_type(directory)  # (through the module: tests replace it)
        if kind in NETWORK_FILESYSTEMS:
            findings.append(
                Finding(
                    PROBLEM,
                    f"the LMDB store {directory} is on a {kind} network file system, where"
                    " LMDB's locks and shared memory do not work",
                    "put CACHE_DIR on a local disk, or use RedisCache to share between machines",
                )
            )
        try:
            check_private_directory(directory)
        except ConfigurationError as error:
            findings.append(
                Finding(
                    PROBLEM,
                    f"{error}; whoever can write the store can plant pickles for every worker",
                    f"chown it to uid {os.geteuid()} (the app's user) and chmod 700 {directory}",
                )
            )
        try:
            used, map_size = backend.fullness()  # no transaction: see its docstring
        except CachekitError as error:
            fix = (
                "make the directory the app's own (chown, chmod 700) and its files readable"
                " by it; a store that reads as corrupt must be moved aside (its state is lost)"
            )
            return [*findings, Finding(PROBLEM, f"the LMDB store cannot be read: {error}", fix)]
        if used > LMDB_FULL_WARNING * map_size:
            findings.append(
                Finding(
                    WARNING,
                    f"the LMDB store {directory} uses {used:,} of its"
                    f" {map_size:,} bytes: past map_size every write fails",
                    "raise CACHE_OPTIONS['map_size'] (and restart every worker), or delete entries",
                )
            )
        return findings

    def __init__(self, backend: LMDBCache, settings: Settings = DEFAULTS) -> None:
        self._store = backend._store
        self._lockfile = lock_file(self._store.directory)  # its busy bytes: see the module
        super().__init__(backend, settings, locks=self._lockfile)
        self.directory = self._store.directory

    # -- hooks ---------------------------------------------------------------------------

    def _load(self, key: str) -> Entry | None:
        stored = self._store.get(self._store.key(key))
        if stored is None:
            return None
        found = unpack(key, stored, time.time(), self._store.codec)
        if found is None:
            return None
        value, expires, body = found
        return Entry(value, expires, bytes(body))

    def _load_many(self, keys: list[str]) -> list[Entry | None]:
        """Every entry from one snapshot (one read transaction)."""
        now = time.time()
        entries: list[Entry | None] = []
        for key, stored in zip(
            keys, self._store.get_many([self._store.key(key) for key in keys]), strict=True
        ):
            found = None if stored is None else unpack(key, stored, now, self._store.codec)
            entries.append(None if found is None else Entry(found[0], found[1], bytes(found[2])))
        return entries

    def _dumps(self, value: Any) -> bytes:
        return encode(value, self._store.codec)

    def _loads(self, raw: bytes) -> Any:
        return decode(raw, self._store.codec)

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        staged = [
            (self._store.key(key), HEADER.pack(expires) + raw)
            for key, (raw, expires) in writes.items()
        ]
        gone = [self._store.key(key) for key in deletes]
        size = sum(len(stored) for _, stored in staged)
        with self._store.writing(size, len(staged) + len(gone)) as txn:
            for name, stored in staged:
                txn.put(name, stored)
            for name in gone:
                txn.delete(name)

    @contextmanager
    def _modifying(self, keys: Collection[str]) -> Iterator[None]:
        """Hold the keys' stripes, then wait out any ``incr`` that began before (the barrier)."""
        with super()._modifying(keys):
            self._store.barrier()
            yield

    # -- incr, natively ------------------------------------------------------------------

    def incr(self, key: str, delta: int, timeout: Any) -> int:
        check_delta(delta, check_key(key))
        wanted = seconds(timeout)
        self._started("incr")
        try:
            busy = self._local.__dict__.get("busy")
            if busy:
                self._refuse_nesting(busy, (key,))
            name = self._store.key(key)
            expires = None if wanted is None else absolute_expiry(wanted)
            stripe = self._locks.stripe(KEYS, key)
            new = self._store.add(key, name, delta, expires, partial(self._lockfile.taken, stripe))
            if new is None:  # an update or transaction holds the key: wait for it, then add
                with self._modifying((key,)):
                    new = self._store.add(key, name, delta, expires, _free)
                    assert new is not None
            return new
        finally:
            self._finished()

    def update(self, key: str, fn: Callable[[Any], T], default: Any, timeout: Any) -> T:
        """Optimistic first, then under the key's stripe; ``fn`` may run more than once.

        An attempt reads the entry, runs ``fn`` and encodes its result outside
        any transaction, then commits only if, under the writer mutex, the
        stored bytes are still the ones it read and no holder has the key's
        stripe. After :data:`OPTIMISTIC_ATTEMPTS` lost races, or as soon as a
        holder has the stripe, the caller takes the stripe itself, and then
        nothing but a plain ``cache.set`` can change the key before it writes.
        """
        check_key(key)
        wanted = seconds(timeout)
        self._started("update")
        try:
            busy: set[str] = self._local.__dict__.setdefault("busy", set())
            self._refuse_nesting(busy, (key,))
            name = self._store.key(key)
            taken = partial(self._lockfile.taken, self._locks.stripe(KEYS, key))
            busy.add(key)
            try:
                for _ in range(OPTIMISTIC_ATTEMPTS):
                    if taken():
                        break
                    stored = self._store.get(name)
                    new, replacement = self._apply(key, stored, fn, default, wanted)
                    if self._store.replace(name, stored, replacement, taken):
                        return new
                    self.stats.count("retries")
                with self._hold(KEYS, (key,), self.settings.key_wait, f"key {key!r}"):
                    self._store.barrier()
                    stored = self._store.get(name)
                    new, replacement = self._apply(key, stored, fn, default, wanted)
                    with self._store.writing(len(replacement)) as txn:
                        txn.put(name, replacement)
                    return new
            finally:
                busy.discard(key)
        finally:
            self._finished()

    def _apply(
        self,
        key: str,
        stored: bytes | None,
        fn: Callable[[Any], T],
        default: Any,
        wanted: float | None,
    ) -> tuple[T, bytes]:
        """``fn`` of the value in ``stored`` (``default`` if none), and the result's stored form."""
        found = None if stored is None else unpack(key, stored, time.time(), self._store.codec)
        if found is None:
            new = fn(copy.deepcopy(default))
            expires = 0
        else:
            new = fn(found[0])
            expires = found[1]
        if wanted is not None:
            expires = absolute_expiry(wanted)
        return new, HEADER.pack(expires) + self._encode(key, new)


def _free() -> bool:
    return False
