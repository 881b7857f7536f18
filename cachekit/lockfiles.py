"""Cross-process locks on one lock file: the mechanism behind FileSystemCache.

All stripes of a cache directory live in a single lock file, as one-byte POSIX
record locks (``fcntl.lockf``) at the stripe's offset. So:

- There is one lock file per cache directory, whatever the number of keys or
  lock names, and it lives *inside* the directory, as
  ``.cachekit-lock.__wz_cache``: cachelib skips every name ending in
  ``.__wz_cache`` (its own temporary files) in ``clear()``, pruning and
  counting, and a lock inside the directory is the same lock however the
  directory is reached (a symlink, ``..``, a bind mount). Within a process
  the lock file is found by the directory's device and inode, never by how
  its path is spelled.
- The lock file is never unlinked, because unlinking a lock file while others
  wait on it splits them across two inodes, and each side would believe it
  holds the lock.
- The kernel drops a process's record locks when it dies, even by ``kill -9``:
  a dead holder never blocks the others, and a live one (even stopped) is
  never overtaken.
- Record locks belong to the process, not to the thread and not to the file
  descriptor: threads are kept apart by the stripes' thread locks
  (:class:`~cachekit.threadlocks.StripedLocks`), and one :class:`LockFile`
  object, holding the only descriptor this process opens on the file, exists
  per directory per process (see :func:`lock_file`). Closing any descriptor of
  the file would release every lock the process holds on it, so the
  descriptor is never closed. A forked child does not inherit its parent's
  record locks.
- Fencing tokens of the LOCKS stripes are 8-byte counters in the same file,
  at :data:`FENCE_BASE` (far past the lock offsets), read and advanced by the
  holder of the stripe's record lock only.
- Each stripe also has a *busy byte* at :data:`BUSY_BASE`, in a shared memory
  map of the file: the holder sets it to 1 right after taking the record lock
  and back to 0 right before releasing it, so that :meth:`LockFile.taken`
  costs a memory read, not a system call. A holder that dies leaves its byte
  at 1; the next holder of the stripe sets and clears it again, so a stale
  byte only ever makes a reader more careful (see
  :mod:`cachekit.lmdb.strategy`, the one reader).

It is opened without following symlinks, created ``0600``, and refused if it
belongs to another user or is open to others.

The kernel offers no timed wait on a record lock, so a waiter polls with a
back-off capped at :data:`MAX_POLL` seconds. Only one thread per process polls
a given stripe; the others wait on its thread lock.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
from typing import Final

from .errors import ConfigurationError, StorageError
from .threadlocks import LOCKS, STRIPES, StripedLocks, next_fence
from .waiting import Backoff

#: The lock file's name inside the cache directory (cachelib skips the suffix).
LOCK_NAME: Final = ".cachekit-lock.__wz_cache"
MIN_POLL: Final = 0.00005
MAX_POLL: Final = 0.002
#: Offset of the fencing counters in the lock file (the lock bytes end at 3 * STRIPES).
FENCE_BASE: Final = 1 << 16
#: Offset of the busy bytes, one per stripe (page-aligned: it is mapped into memory),
#: followed by a few shared 8-byte words (:meth:`LockFile.shared_word`).
BUSY_BASE: Final = 1 << 17
_BUSY_SIZE: Final = 3 * STRIPES
_WORDS: Final = 16
_MAPPED: Final = _BUSY_SIZE + 8 * _WORDS
_FENCE: Final = struct.Struct("<Q")

_CONTENDED: Final = frozenset({errno.EAGAIN, errno.EACCES})


class LockFile(StripedLocks):
    """Striped locks that exclude threads of this process and all other processes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._fd = _open_private(path)
        try:
            if os.fstat(self._fd).st_size < BUSY_BASE + _MAPPED:
                os.ftruncate(self._fd, BUSY_BASE + _MAPPED)  # sparse; never shrinks
            self._busy = mmap.mmap(self._fd, _MAPPED, mmap.MAP_SHARED, offset=BUSY_BASE)
        except OSError as error:
            raise ConfigurationError(
                f"cannot map the cachekit lock file {path!r}: {error.strerror}", path=path
            ) from error

    def _acquire_outer(self, number: int, deadline: float | None) -> int | None:
        backoff = Backoff(MIN_POLL, MAX_POLL, deadline)
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, number, os.SEEK_SET)
                break
            except OSError as error:
                if error.errno not in _CONTENDED:
                    raise
            if not backoff.started:
                self._contended()
            if not backoff.sleep():
                return None
        self._busy[number] = 1
        if number // STRIPES != LOCKS:
            return 0
        try:
            return self._fence(number)
        except BaseException:
            self._release_outer(number)
            raise

    def _fence(self, number: int) -> int:
        offset = FENCE_BASE + (number - LOCKS * STRIPES) * _FENCE.size
        try:
            data = os.pread(self._fd, _FENCE.size, offset)
            last = _FENCE.unpack(data)[0] if len(data) == _FENCE.size else 0
            token = next_fence(last)
            os.pwrite(self._fd, _FENCE.pack(token), offset)
        except OSError as error:
            raise StorageError(
                f"cannot record the fencing token of lock stripe {number} in {self.path}:"
                f" {error.strerror}",
                path=self.path,
            ) from error
        return token

    def taken(self, number: int) -> bool:
        """Whether stripe ``number`` is (or, after a holder died, may be) held by anyone.

        Reads the stripe's busy byte: 1 from just after its holder took it
        until just before it lets it go, in any thread of any process.
        """
        return self._busy[number] != 0

    def shared_word(self, index: int) -> SharedWord:
        """A signed 8-byte word in the lock file's shared memory, the same in every process.

        Reads and writes are not atomic with one another: the caller orders
        them with a lock of its own (the LMDB store's writer mutex, for word 0).
        """
        if not 0 <= index < _WORDS:
            raise ValueError(f"there are {_WORDS} shared words, not {index + 1}")
        return SharedWord(self._busy, _BUSY_SIZE + 8 * index)

    def _release_outer(self, number: int) -> bool:
        self._busy[number] = 0
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, number, os.SEEK_SET)
        return True


class SharedWord:
    """One 8-byte word of a shared memory map (see :meth:`LockFile.shared_word`)."""

    __slots__ = ("_map", "_offset")
    _FORMAT: Final = struct.Struct("<q")

    def __init__(self, shared: mmap.mmap, offset: int) -> None:
        self._map = shared
        self._offset = offset

    def get(self) -> int:
        return int(self._FORMAT.unpack_from(self._map, self._offset)[0])

    def set(self, value: int) -> None:
        self._FORMAT.pack_into(self._map, self._offset, value)


_files: dict[tuple[int, int], LockFile] = {}
_files_lock = threading.Lock()  # held only to create a LockFile (no network I/O)


def lock_file(directory: str) -> LockFile:
    """The one :class:`LockFile` of this process for the cache ``directory``.

    Found by the directory's device and inode, so every spelling of one
    directory shares one lock file (and one set of thread stripes).
    """
    info = stat_directory(directory)
    identity = (info.st_dev, info.st_ino)
    found = _files.get(identity)
    if found is None:
        with _files_lock:
            found = _files.get(identity)
            if found is None:
                found = _files[identity] = LockFile(os.path.join(directory, LOCK_NAME))
    return found


def stat_directory(directory: str) -> os.stat_result:
    """``os.stat`` of a cache directory; :class:`ConfigurationError` if it cannot be used."""
    try:
        return os.stat(directory)
    except OSError as error:
        raise ConfigurationError(
            f"cannot use the cache directory {directory!r}: {error.strerror}", path=directory
        ) from error


def private_file_problem(info: os.stat_result) -> str | None:
    """Why a file with this ``stat`` is not a private file of this user's, or None if it is."""
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink, which cachekit never follows: remove it"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid != os.geteuid():
        return f"it belongs to uid {info.st_uid}, not to this process's uid {os.geteuid()}"
    if info.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(info.st_mode):o}; run chmod 600 on it"
    return None


def _open_private(path: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        hint = " (it is a symlink: remove it)" if error.errno == errno.ELOOP else ""
        raise ConfigurationError(
            f"cannot open the cachekit lock file {path!r}{hint}: {error.strerror}",
            path=path,
        ) from error
    problem = private_file_problem(os.fstat(fd))
    if problem:
        os.close(fd)
        raise ConfigurationError(f"refusing the cachekit lock file {path!r}: {problem}", path=path)
    return fd
