"""The LMDB engine under LMDBCache: one environment per directory per process.

Everything that touches py-lmdb lives here: opening, the stored format, keys,
the write transaction, expiry sweeps and the translation of LMDB's errors.

Invariants:

- **One environment per directory per process.** LMDB forbids opening one
  environment twice in a process (closing either would drop the other's
  POSIX locks on ``lock.mdb``), so environments are found by the directory's
  device and inode.
- **Never across a fork.** A forked child never uses its parent's
  environment (LMDB forbids it): on first use it closes the inherited one,
  *before* opening its own (closing drops the process's locks on
  ``lock.mdb``, which the child does not inherit, so it holds none yet), and
  py-lmdb refuses a second environment of a path while the first is open.
  Closing is safe only if nothing of the parent's is released by it: no
  read transaction is kept spare (``max_spare_txns=0``; aborting a spare
  one in the child would free the *parent's* reader slot), and no thread of
  the parent was inside a transaction at the fork (tracked in
  :data:`_in_flight`). A child forked while one was refuses to use the
  store with a clear error rather than risk the parent's reads.
- **A write transaction holds no user code and no waits.** Values are
  encoded before it begins; inside it cachekit only reads, compares and puts
  bytes. LMDB's writer mutex (in ``lock.mdb``, recovered by Linux when its
  holder dies) is therefore held for microseconds, and waiting on it blocks
  a thread, or a gevent worker, for no longer. Long waits (a ``lock`` block,
  an ``update``'s ``fn``) happen on the record locks of
  :mod:`cachekit.lockfiles`, which time out.
- **Space: full is an error, never a crash.** The map is opened writable
  (``writemap``: a commit costs no system call), and a page written where
  the disk has no room would kill the process with SIGBUS. So disk blocks are
  allocated ahead of the store's last page, and every write transaction of
  every process spends an upper bound of its growth from a budget shared in
  the lock file, under the writer mutex (:meth:`Environment.spend`): no
  writer can outrun the reservation, and a disk that cannot give more blocks
  fails the write with :class:`~cachekit.errors.WriteError` before anything is
  written. On file systems that copy on write (btrfs, ZFS), where rewriting
  an allocated page needs new blocks, the map is not writable: LMDB writes
  with ``pwrite``, whose errors are plain errors.
- **One pid namespace per store.** LMDB tells readers apart by pid, unique
  only within a pid namespace: a store open from another namespace (another
  container sharing the directory) is refused at open
  (:mod:`cachekit.lmdb.namespaces`).
- **Nothing expires by eviction.** An entry is removed only when it expired
  (lazily invisible on read, deleted by a bounded sweep), when deleted, or
  by ``clear()``. A store that is full fails the write with
  :class:`~cachekit.errors.WriteError`, nothing written.

Stored form of an entry: a little-endian unsigned 32-bit absolute expiry in
Unix seconds (0: never), a kind byte, then the payload: a signed 64-bit
little-endian integer for an ``int`` that fits, else a pickle (kind 0), or,
once :mod:`cachekit.signing` installed a codec on the store (``Store.codec``),
a signed envelope (kind 3) whose MAC is checked before anything is unpickled.
Ints are never signed: they are parsed, never unpickled.

Keys: the UTF-8 bytes of the key; a key longer than LMDB's limit (511 bytes)
is stored as its first bytes, the byte ``0xff`` (never found in UTF-8) and
the SHA-256 of the whole key, so it can never collide with a short key.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from threading import get_ident
from typing import Any, Final, Literal

import lmdb

from ..errors import (
    CachekitError,
    ConfigurationError,
    CorruptValue,
    ReadAsMissing,
    Refused,
    StorageError,
    ValueTypeError,
    WriteError,
)
from ..forking import at_fork
from ..lockfiles import lock_file, private_file_problem
from . import namespaces

#: The expiry header of every entry (0: never).
HEADER: Final = struct.Struct("<I")
PICKLED: Final = 0
INTEGER: Final = 1
BIG_INTEGER: Final = 2  # an int past 64 bits: its two's complement bytes, little-endian
SIGNED: Final = 3  # a signed envelope (cachekit.signing): checked before it is unpickled
_INT: Final = struct.Struct("<q")
_INT_HEADER: Final = struct.Struct("<IBq")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

#: The default most the store can hold. LMDB maps the file into every process's address
#: space; the file itself grows only as it fills.
DEFAULT_MAP_SIZE: Final = 8 << 30
#: Reader slots in lock.mdb: one per thread in a read transaction, in every process.
MAX_READERS: Final = 4096
#: A sweep of expired entries runs every SWEEP_EVERY writes of a process and
#: examines at most SWEEP_BATCH entries, continuing where the last sweep of any
#: process stopped.
SWEEP_EVERY: Final = 256
SWEEP_BATCH: Final = 256
_SWEEP_POSITION: Final = b"sweep"
#: Disk blocks kept allocated past the store's last page (see :meth:`Environment.spend`),
#: or MIN_RESERVE on a disk with less room to spare.
RESERVE: Final = 64 << 20
MIN_RESERVE: Final = 1 << 20
#: What a write transaction may add past the last page besides its values: the pages of
#: the paths in the tree and of the free list it copies on write (generously), and per key
#: put or deleted, its leaf (keys far apart each copy their own) and a page of slack.
PUT_PAGES: Final = 16
KEY_PAGES: Final = 2
#: File systems that copy on write: a page of a writable map rewritten in place needs new
#: blocks there, which no reservation guarantees, so the map is not opened writable on them.
COPY_ON_WRITE: Final = frozenset({"btrfs", "zfs", "bcachefs"})

Durability = Literal["process", "machine"]
DURABILITIES: Final = ("process", "machine")

#: File systems on which LMDB is unsafe: its locks and shared memory map do not
#: work across machines (and often not within one).
NETWORK_FILESYSTEMS: Final = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
     "afs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse",
     "beegfs", "ocfs2", "gfs2", "virtiofs", "davfs", "fuse.rclone"}
)  # fmt: skip


@dataclass(frozen=True)
class Options:
    """How a directory's environment is opened; every user of a directory must agree."""

    map_size: int
    durability: Durability


class Environment:
    """This process's open LMDB environment of one directory, and its two databases."""

    def __init__(self, directory: str, options: Options, writemap: bool) -> None:
        self.directory = directory
        self.options = options
        self.writemap = writemap
        durable = options.durability == "machine"
        try:
            self.env = lmdb.open(
                directory,
                map_size=options.map_size,
                subdir=True,
                sync=durable,
                metasync=durable,
                mode=0o600,
                create=False,
                readahead=False,
                writemap=writemap,  # see the module's note on space
                meminit=False,
                max_readers=MAX_READERS,
                max_dbs=2,
                max_spare_txns=0,  # see the module's note on forks
                lock=True,
            )
        except lmdb.Error as error:
            raise StorageError(
                f"cannot open the LMDB store in {directory!r}: {error}", path=directory
            ) from error
        path = os.path.join(directory, "data.mdb")
        try:  # LMDB locks only lock.mdb, so this descriptor may be closed freely
            self.data = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            if writemap:  # blocks for the first pages, which creating the databases writes
                os.posix_fallocate(self.data, 0, min(MIN_RESERVE, options.map_size))
        except OSError as error:
            self.env.close()  # opened in this process only: closing it is safe
            raise StorageError(
                f"cannot open the LMDB store in {directory!r}: {path}: {error.strerror}",
                path=path,
            ) from error
        try:
            self.env.reader_check()  # free the reader slots of dead processes
            self.entries = self.env.open_db(b"entries")
            self.meta = self.env.open_db(b"meta")
        except lmdb.Error as error:
            raise StorageError(
                f"cannot open the LMDB store in {directory!r}: {error}", path=directory
            ) from error
        self.max_key = self.env.max_key_size()
        self.page = self.env.stat()["psize"]
        self.writes = 0  # this process's write transactions, for the sweep's cadence
        shared = lock_file(directory)
        self.budget, self.owner = shared.shared_word(0), shared.shared_word(1)  # see spend()
        self.inode = os.fstat(self.data).st_ino

    def spend(self, size: int, puts: int = 1) -> None:
        """Account for a write transaction of ``puts`` puts or deletes of ``size`` bytes in all.

        Called holding the writer mutex, before the transaction writes.

        With a writable memory map, a page written where the disk has no room
        would kill the process with SIGBUS. So disk blocks are allocated ahead
        of the store's last page, and every write transaction, of every
        process, spends an upper bound of what it may add past that page from
        a budget shared in the lock file. Both happen under LMDB's writer
        mutex, so no writer of any process can outrun the reservation. When
        the budget runs out, blocks are allocated again; if the disk cannot
        give them, :class:`~cachekit.errors.WriteError`, with nothing written.

        Each put or delete may copy a leaf of its own (when the keys are far
        apart), so the bound is ``size``, :data:`PUT_PAGES` pages, and
        :data:`KEY_PAGES` pages per key. The budget belongs to one
        ``data.mdb``, named by its inode beside it: a store deleted and made
        again starts with none.
        """
        if not self.writemap:
            return  # plain writes: a full disk is an error of the write itself
        cost = size + (PUT_PAGES + KEY_PAGES * puts) * self.page
        left = self.budget.get() - cost if self.owner.get() == self.inode else -1
        if left < 0:
            left = self._reserve(cost) - cost
            self.owner.set(self.inode)
        self.budget.set(left)

    def spend_on_write(self, size: int, puts: int = 1) -> bool:
        """:meth:`spend` for a write transaction, and a sweep's deletes if one is due: is it."""
        sweeping = (self.writes + 1) % SWEEP_EVERY == 0
        self.spend(size, puts + (SWEEP_BATCH if sweeping else 0))
        return sweeping

    def _reserve(self, extra: int) -> int:
        """Allocate blocks past the last page for ``extra`` bytes and more; how many bytes."""
        used = (self.env.info()["last_pgno"] + 1) * self.page
        for ahead in (RESERVE, MIN_RESERVE):
            wanted = min(used + ahead + extra, self.options.map_size)
            try:
                os.posix_fallocate(self.data, 0, wanted)
            except OSError as error:
                if error.errno == errno.ENOSPC and ahead != MIN_RESERVE:
                    continue  # a disk with less room to spare: reserve less, more often
                self.budget.set(0)
                raise WriteError(
                    f"cannot reserve disk space for the LMDB store in {self.directory!r}:"
                    f" {error.strerror}; nothing was written",
                    path=self.directory,
                ) from error
            return wanted - used
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the environment (for a child's copy of its parent's; see the module)."""
        self.env.close()
        os.close(self.data)


_generation = 0
_environments: dict[tuple[int, int], tuple[int, Environment]] = {}
_opening = threading.Lock()  # held only to open an environment (local I/O, no network)
#: Threads of this process inside a transaction right now (set.add/discard are atomic).
_in_flight: set[int] = set()
#: Environments inherited from the parent, by identity: (environment, safe to close).
_inherited: dict[tuple[int, int], tuple[Environment, bool]] = {}


def _after_fork_in_child() -> None:
    global _generation, _opening
    _generation += 1
    _opening = threading.Lock()
    safe = not _in_flight  # the forking thread itself is never inside one
    for identity, (_, environment) in _environments.items():
        _inherited[identity] = (environment, safe)
    _environments.clear()
    _in_flight.clear()


def _release_inherited(identity: tuple[int, int], directory: str) -> None:
    """Close the parent's environment of ``identity`` in this child, or refuse if unsafe."""
    inherited, safe = _inherited.get(identity, (None, True))
    if inherited is None:
        return
    if not safe:
        raise StorageError(
            f"this process was forked while another thread was inside a transaction of the"
            f" LMDB store in {directory!r}, so it cannot open the store safely (closing the"
            " parent's copy here could release the parent's reader slot). Fork from a"
            " process whose other threads are not using the cache, or use spawn.",
            path=directory,
        )
    del _inherited[identity]
    inherited.close()


at_fork(after_in_child=_after_fork_in_child)


def filesystem_type(path: str) -> str | None:
    """The type of the file system holding ``path`` (``/proc/self/mountinfo``), if known."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            text = mounts.read()
    except OSError:
        return None
    return mount_type(text, os.path.realpath(path))


def mount_type(mountinfo: str, path: str) -> str | None:
    """The type of the mount in ``mountinfo`` text that holds the real path ``path``."""
    best, found = -1, None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        point = fields[4].replace("\\040", " ")
        within = path == point or path.startswith(point.rstrip("/") + "/")
        if within and len(point) >= best:  # later mounts on the same point hide earlier ones
            best, found = len(point), fields[fields.index("-", 6) + 1]
    return found


class Store:
    """The LMDB store of one cache directory, as this process reaches it.

    Thread-safe: transactions are made per call (py-lmdb releases the GIL
    while it waits for the writer mutex), and the environment is shared.
    """

    def __init__(self, directory: str, options: Options) -> None:
        self.directory = _prepare_directory(directory)
        self.options = options
        #: The signing of this store's values (cachekit.signing.Codec), once installed.
        self.codec: Any = None
        self._made: tuple[int, Environment] | None = None
        #: LMDB's longest key (511 bytes unless built otherwise); the same in every process.
        self.max_key = self._environment().max_key  # and fail at start-up, not at first use

    # -- the environment ---------------------------------------------------------

    def _environment(self) -> Environment:
        made = self._made
        if made is not None and made[0] == _generation:
            return made[1]
        info = os.stat(self.directory)
        identity = (info.st_dev, info.st_ino)
        with _opening:
            found = _environments.get(identity)
            if found is None or found[0] != _generation:
                kind = filesystem_type(self.directory)
                if kind in NETWORK_FILESYSTEMS:
                    raise ConfigurationError(
                        f"refusing the LMDB store in {self.directory!r}: it is on a {kind}"
                        " network file system, where LMDB's locks and shared memory do not"
                        " work. Use a local disk, or RedisCache to share state between"
                        " machines.",
                        path=self.directory,
                    )
                _check_files(self.directory)
                namespaces.claim(self.directory, identity)  # before LMDB uses pids
                _release_inherited(identity, self.directory)
                found = _environments[identity] = (
                    _generation,
                    Environment(self.directory, self.options, kind not in COPY_ON_WRITE),
                )
            if found[1].options != self.options:
                raise ConfigurationError(
                    f"the LMDB store in {self.directory!r} is already open in this process"
                    f" with {found[1].options}, not {self.options}: give every LMDBCache of"
                    " one directory the same CACHE_OPTIONS",
                    path=self.directory,
                )
        self._made = found
        return found[1]

    def key(self, key: str) -> bytes:
        """The stored form of ``key`` (a checked ``str``)."""
        data = key.encode("utf-8")
        if len(data) > self.max_key:
            digest = hashlib.sha256(data).digest()
            data = data[: self.max_key - len(digest) - 1] + b"\xff" + digest
        return data

    # -- transactions --------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The stored bytes of ``key`` (expired or not), in a read transaction."""
        made = self._made
        opened = made[1] if made is not None and made[0] == _generation else self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            txn = opened.env.begin(db=opened.entries)
            try:
                return txn.get(key)
            finally:
                txn.abort()
        except lmdb.Error as error:
            raise self._failure("read from", error) from error
        finally:
            _in_flight.discard(thread)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored bytes of each key, from one snapshot."""
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            with opened.env.begin(db=opened.entries) as txn:
                return [txn.get(key) for key in keys]
        except lmdb.Error as error:
            raise self._failure("read from", error) from error
        finally:
            _in_flight.discard(thread)

    @contextmanager
    def writing(self, size: int = 0, puts: int = 1) -> Iterator[Any]:
        """A write transaction on the entries, committed if the block ends normally.

        ``size`` is the most bytes the block will put. The block must not
        wait on anything or run user code (see the module's invariants).
        Every ``SWEEP_EVERY`` writes a bounded sweep of expired entries runs
        in the same transaction.
        """
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            try:
                txn = opened.env.begin(write=True, db=opened.entries)
            except lmdb.Error as error:
                raise self._failure("write to", error) from error
            try:
                sweeping = opened.spend_on_write(size, puts)
                yield txn
                self._commit(opened, txn, sweeping)
            except lmdb.Error as error:
                txn.abort()
                raise self._failure("write to", error) from error
            except BaseException:
                txn.abort()
                raise
        finally:
            _in_flight.discard(thread)

    def add(
        self, key: str, name: bytes, delta: int, expires: int | None, busy: Callable[[], bool]
    ) -> int | None:
        """Add ``delta`` to the int at ``name`` in one write transaction: the new value.

        ``expires`` replaces the entry's expiry unless None (a new entry then
        gets none). Returns None, with nothing written, if ``busy()`` says so
        once the writer mutex is held. Raises
        :class:`~cachekit.errors.ValueTypeError` for a value that is not an int.
        The hot path of ``incr``: written out, with no context manager.
        """
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            txn = opened.env.begin(write=True, db=opened.entries)
        except lmdb.Error as error:
            _in_flight.discard(thread)
            raise self._failure("write to", error) from error
        try:
            if busy():
                txn.abort()
                return None
            sweeping = opened.spend_on_write(_INT_HEADER.size)
            stored = txn.get(name)
            if stored is None:
                current, old_expires = 0, 0
            elif len(stored) == _INT_HEADER.size and stored[HEADER.size] == INTEGER:
                old_expires, _, current = _INT_HEADER.unpack(stored)
                if old_expires and old_expires < time.time():
                    current, old_expires = 0, 0
            else:
                old_expires = expiry(stored)
                found = None
                if len(stored) <= HEADER.size:
                    raise _NotAnInt(stored)  # truncated: reported as corrupt below
                if not (old_expires and old_expires < time.time()):
                    found = integer(memoryview(stored)[HEADER.size :])
                    if found is None:  # named below, once the transaction has ended
                        raise _NotAnInt(stored)
                current = 0 if found is None else found
                if found is None:
                    old_expires = 0
            new: int = current + delta
            replacement = pack(old_expires if expires is None else expires, new)
            if len(replacement) > _INT_HEADER.size:  # an int past 64 bits: spend its size too
                opened.spend(len(replacement), 0)
            txn.put(name, replacement)
            self._commit(opened, txn, sweeping)
            return new
        except lmdb.Error as error:
            txn.abort()
            raise self._failure("write to", error) from error
        except _NotAnInt as error:
            txn.abort()
            held = unpack(key, error.stored, 0, self.codec)  # outside the transaction
            what = "nothing" if held is None else f"a {type(held[0]).__name__}"
            raise ValueTypeError(
                f"key {key!r} holds {what}, not an int: incr cannot add to it", key=key
            ) from None
        except BaseException:
            txn.abort()
            raise
        finally:
            _in_flight.discard(thread)

    def replace(
        self, name: bytes, expected: bytes | None, stored: bytes, busy: Callable[[], bool]
    ) -> bool:
        """Put ``stored`` at ``name`` if it still holds ``expected`` and ``busy()`` is false.

        Both are judged under the writer mutex; False, with nothing written, if
        not. The hot path of ``update``: written out, with no context manager.
        """
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            txn = opened.env.begin(write=True, db=opened.entries)
        except lmdb.Error as error:
            _in_flight.discard(thread)
            raise self._failure("write to", error) from error
        try:
            if busy() or txn.get(name) != expected:
                txn.abort()
                return False
            sweeping = opened.spend_on_write(len(stored))
            txn.put(name, stored)
            self._commit(opened, txn, sweeping)
            return True
        except lmdb.Error as error:
            txn.abort()
            raise self._failure("write to", error) from error
        except BaseException:
            txn.abort()
            raise
        finally:
            _in_flight.discard(thread)

    def _commit(self, opened: Environment, txn: Any, sweeping: bool) -> None:
        """Commit a write transaction, sweeping first if ``spend_on_write`` said one is due."""
        opened.writes += 1
        if sweeping:
            self._sweep(opened, txn)
        txn.commit()

    def barrier(self) -> None:
        """Wait until every write transaction begun before this call has ended."""
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            opened.env.begin(write=True).abort()
        except lmdb.Error as error:
            raise self._failure("write to", error) from error
        finally:
            _in_flight.discard(thread)

    def clear(self) -> None:
        """Delete every entry, in one transaction."""
        with self.writing(self.statistics()["used_bytes"] // 64) as txn:  # the free list grows
            txn.drop(self._environment().entries, delete=False)

    def sweep(self, batch: int = SWEEP_BATCH) -> int:
        """Delete expired entries among the next ``batch``; how many were deleted."""
        opened = self._environment()
        with self.writing(0, batch) as txn:
            return self._sweep(opened, txn, batch)

    @staticmethod
    def _sweep(opened: Environment, txn: Any, batch: int = SWEEP_BATCH) -> int:
        """Delete expired entries among the next ``batch``, and free dead readers' slots.

        A reader slot left by a process killed inside a read transaction pins
        the pages of its snapshot, so the file would grow; processes that open
        the store free such slots too.
        """
        opened.env.reader_check()
        now = time.time()
        position = txn.get(_SWEEP_POSITION, db=opened.meta) or b""
        cursor = txn.cursor(db=opened.entries)
        removed = 0
        found = cursor.set_range(position) if position else cursor.first()
        for _ in range(batch):
            if not found:
                break
            value = cursor.value()
            (expires,) = HEADER.unpack_from(value) if len(value) >= HEADER.size else (0,)
            if expires and expires < now:
                found = cursor.delete()  # moves to the next entry
                removed += 1
            else:
                found = cursor.next()
        txn.put(_SWEEP_POSITION, cursor.key() if found else b"", db=opened.meta)
        return removed

    def fullness(self) -> tuple[int, int]:
        """Bytes in use and the map's size, read without a transaction (for the start-up checks).

        No reader slot is taken: a read transaction of a process that later
        forks (gunicorn's master under ``--preload``, which runs the start-up
        checks) broke its children's reads with ``MDB_BAD_RSLOT`` on py-lmdb
        1.6 (tests/test_gunicorn.py's preload cases).
        """
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)
        try:
            info = opened.env.info()
        finally:
            _in_flight.discard(thread)
        return (info["last_pgno"] + 1) * opened.page, info["map_size"]

    def statistics(self) -> dict[str, int]:
        """Entries, pages in use and the map's size, for doctor."""
        opened = self._environment()
        thread = get_ident()
        _in_flight.add(thread)  # every call into py-lmdb is one: see the module's note on forks
        try:
            info = opened.env.info()
            with opened.env.begin(db=opened.entries) as txn:
                entries = txn.stat(opened.entries)["entries"]
        finally:
            _in_flight.discard(thread)
        page = opened.page
        return {
            "entries": entries,
            "used_bytes": (info["last_pgno"] + 1) * page,
            "map_size": info["map_size"],
            "readers": info["num_readers"],
            "max_readers": info["max_readers"],
        }

    def _failure(self, doing: str, error: lmdb.Error) -> CachekitError:
        where = self.directory
        if isinstance(error, lmdb.MapFullError):
            return WriteError(
                f"the LMDB store in {where!r} is full (map_size {self.options.map_size:,}"
                " bytes); nothing was written. Delete what you no longer need, or raise"
                " CACHE_OPTIONS['map_size'] and restart every worker.",
                path=where,
            )
        if isinstance(error, lmdb.MapResizedError):
            return StorageError(
                f"another process grew the LMDB store in {where!r} beyond this process's"
                f" map_size ({self.options.map_size:,} bytes); restart this worker with the"
                " same CACHE_OPTIONS['map_size'] as the others",
                path=where,
            )
        if isinstance(error, lmdb.ReadersFullError):
            try:
                self._environment().env.reader_check()
            except lmdb.Error:
                pass
            return StorageError(
                f"every one of the {MAX_READERS} reader slots of the LMDB store in {where!r}"
                " is in use; stale slots of dead processes were cleared, try again",
                path=where,
            )
        if isinstance(error, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError)):
            return CorruptValue(
                f"the LMDB store in {where!r} is corrupt ({error}); it was left as it is."
                " It is a cache: stop the workers and delete the directory's data.mdb and"
                " lock.mdb",
                path=where,
            )
        cls = WriteError if doing == "write to" else StorageError
        return cls(f"cannot {doing} the LMDB store in {where!r}: {error}", path=where)


# -- the stored form ---------------------------------------------------------------


def encode(value: Any, codec: Any = None) -> bytes:
    """The kind byte and payload of ``value`` (without the expiry header).

    Ints are never pickled, so that a write transaction can add to one
    without unpickling anything (which could run code). With a ``codec``
    that signs, anything else is a signed envelope.
    """
    if type(value) is int:
        if _INT_MIN <= value <= _INT_MAX:
            return b"\x01" + _INT.pack(value)
        size = (value.bit_length() + 8) // 8
        return b"\x02" + value.to_bytes(size, "little", signed=True)
    if codec is not None and codec.sign:
        return codec.seal(value, b"\x03")  # type: ignore[no-any-return]
    return b"\x00" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def pack(expires: int, value: Any, codec: Any = None) -> bytes:
    """The stored form of ``value`` expiring at ``expires`` (0: never)."""
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return _INT_HEADER.pack(expires, INTEGER, value)
    if codec is not None and codec.sign and type(value) is not int:
        return codec.seal(value, HEADER.pack(expires) + b"\x03")  # type: ignore[no-any-return]
    return HEADER.pack(expires) + encode(value, codec)


def integer(body: bytes | memoryview) -> int | None:
    """The int in a kind byte and payload, or None if it holds anything else (never unpickled).

    None too for an int of the wrong length: :func:`decode` then says it is corrupt.
    """
    kind = body[0]
    if kind == INTEGER and len(body) == 1 + _INT.size:
        return int(_INT.unpack_from(body, 1)[0])
    if kind == BIG_INTEGER and len(body) > 1:
        return int.from_bytes(body[1:], "little", signed=True)
    return None


def expiry(stored: bytes) -> int:
    """The absolute expiry of a stored entry (0: never)."""
    return HEADER.unpack_from(stored)[0] if len(stored) >= HEADER.size else 0


def decode(body: bytes | memoryview, codec: Any = None) -> Any:
    """The value of a kind byte and payload; raises if it cannot be decoded.

    With a ``codec`` (:mod:`cachekit.signing`), a signed envelope is checked
    before it is unpickled and a bare pickle is what the codec's
    ``CACHEKIT_UNSIGNED`` says; both raise :class:`~cachekit.signing.Refused`.
    """
    kind = body[0]
    if kind in (INTEGER, BIG_INTEGER):
        found = integer(body)
        if found is None:
            raise ValueError(f"an int of kind {kind} cannot be {len(body) - 1} bytes long")
        return found
    view = body if isinstance(body, memoryview) else memoryview(body)
    if kind == SIGNED:
        if codec is None:
            raise ValueError(
                "it is signed, and this LMDBCache has no signing key (CacheKit.init_app installs"
                " the app's)"
            )
        return codec.open(view[1:])
    if kind == PICKLED:
        if codec is not None:
            return codec.unsigned_value(lambda: pickle.loads(view[1:]))
        return pickle.loads(view[1:])
    raise ValueError(f"unknown kind {kind}")


class _NotAnInt(Exception):
    """Inside :meth:`Store.add`: the entry holds something other than an int."""

    def __init__(self, stored: bytes) -> None:
        self.stored = stored


#: What :func:`value` returns for an expired entry.
EXPIRED: Final = object()


def value(key: str, stored: bytes, now: float, codec: Any = None) -> Any:
    """The value of a stored entry, or :data:`EXPIRED`: :func:`unpack` for the hot read path."""
    if len(stored) > HEADER.size:
        (expires,) = HEADER.unpack_from(stored)
        if expires and expires < now:
            return EXPIRED
        kind = stored[HEADER.size]
        try:
            if kind == SIGNED and codec is not None:
                return codec.open(stored, HEADER.size + 1)
            if kind == PICKLED and (codec is None or not codec.sign):  # (as decode reads it)
                return pickle.loads(stored[HEADER.size + 1 :])
            if kind == INTEGER and len(stored) == _INT_HEADER.size:
                return _INT.unpack_from(stored, HEADER.size + 1)[0]
            if kind == BIG_INTEGER and len(stored) > HEADER.size + 1:
                return int.from_bytes(stored[HEADER.size + 1 :], "little", signed=True)
        except Exception:  # noqa: S110 (unpack below says what is wrong, as CorruptValue)
            pass
    found = unpack(key, stored, now, codec)
    return EXPIRED if found is None else found[0]


def unpack(
    key: str, stored: bytes, now: float, codec: Any = None
) -> tuple[Any, int, memoryview] | None:
    """``(value, expires, body)`` of a stored entry, or None if it expired.

    Raises :class:`~cachekit.errors.CorruptValue` for bytes that cannot be
    decoded, :class:`~cachekit.errors.TamperedValue` for a value refused by
    its signature check; an unsigned value under ``CACHEKIT_UNSIGNED = "miss"``
    reads as missing (None).
    """
    if len(stored) < HEADER.size + 1:
        raise CorruptValue(
            f"key {key!r} holds {stored!r}, too short to be an entry; it was left as it is",
            key=key,
        )
    (expires,) = HEADER.unpack_from(stored)
    if expires and expires < now:
        return None
    body = memoryview(stored)[HEADER.size :]
    try:
        if codec is not None and stored[HEADER.size] == SIGNED:
            return codec.open(stored, HEADER.size + 1), expires, body
        return decode(body, codec), expires, body
    except Refused as refused:
        error = codec.named(refused, key)
        if isinstance(error, ReadAsMissing):
            return None
        raise error from None
    except Exception as error:
        raise CorruptValue(
            f"key {key!r} holds {bytes(body[:40])!r}, which cannot be decoded"
            f" ({type(error).__name__}: {error}); it was left as it is",
            key=key,
        ) from error


# -- the directory -------------------------------------------------------------------


def _prepare_directory(directory: str) -> str:
    """Create ``directory`` (0700) if missing; its real path, refused if others can write it."""
    from ..filesystem import check_private_directory

    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        raise ConfigurationError("LMDBCache needs a directory: set CACHE_DIR", setting="CACHE_DIR")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(
            f"cannot create the cache directory {directory!r}: {error.strerror}",
            path=directory,
        ) from error
    real = os.path.realpath(directory)
    check_private_directory(real)
    return real


def _check_files(directory: str) -> None:
    """Refuse LMDB's files if they are symlinks, not ours, or open to others."""
    for name in ("data.mdb", "lock.mdb"):
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise ConfigurationError(f"cannot use {path!r}: {error.strerror}", path=path) from error
        problem = private_file_problem(info)
        if problem:
            raise ConfigurationError(f"refusing {path!r}: {problem}", path=path)
