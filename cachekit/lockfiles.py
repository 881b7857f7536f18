"""Cross-process locks on one lock file: the mechanism behind FileSystemCache.

All stripes of a cache directory live in a single lock file, as one-byte POSIX
record locks (``fcntl.lockf``) at the stripe's offset. So:

- The number of lock files is one per cache directory, whatever the number of
  keys or lock names.
- The lock file is never unlinked, because unlinking a lock file while others
  wait on it splits them across two inodes, and each side would believe it
  holds the lock.
- The kernel drops a process's record locks when it dies, even by ``kill -9``:
  a dead holder never blocks the others.
- Record locks belong to the process, not to the thread and not to the file
  descriptor: threads are kept apart by the stripes' thread locks
  (:class:`~cachekit.threadlocks.StripedLocks`), and one :class:`LockFile`
  object, holding the only descriptor this process opens on the file, exists
  per file per process (see :func:`lock_file`). Closing any descriptor of the
  file would release every lock the process holds on it, so the descriptor is
  never closed. A forked child does not inherit its parent's record locks.

The file lives *beside* the cache directory, not in it: FileSystemCache treats
every file in its directory as an entry, so ``clear()`` and pruning would
delete it. It is opened without following symlinks, created ``0600``, and
refused if it belongs to another user or is open to others.

The kernel offers no timed wait on a record lock, so a waiter polls with a
back-off capped at :data:`MAX_POLL` seconds. Only one thread per process polls
a given stripe; the others wait on its thread lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
from typing import Final

from .errors import ConfigurationError
from .threadlocks import StripedLocks

MIN_POLL: Final = 0.00005
MAX_POLL: Final = 0.002

_CONTENDED: Final = frozenset({errno.EAGAIN, errno.EACCES})


class LockFile(StripedLocks):
    """Striped locks that exclude threads of this process and all other processes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._fd = _open_private(path)

    def _acquire_outer(self, number: int, deadline: float | None) -> bool:
        delay = 0.0
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, number, os.SEEK_SET)
                return True
            except OSError as error:
                if error.errno not in _CONTENDED:
                    raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            delay = min(MAX_POLL, delay * 2 or MIN_POLL)
            time.sleep(delay if deadline is None else min(delay, deadline - now))

    def _release_outer(self, number: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, number, os.SEEK_SET)


_files: dict[str, LockFile] = {}
_files_lock = threading.Lock()


def lock_file(path: str) -> LockFile:
    """The one :class:`LockFile` of this process for ``path``, created on first use."""
    key = os.path.realpath(path)
    found = _files.get(key)
    if found is None:
        with _files_lock:
            found = _files.get(key)
            if found is None:
                found = _files[key] = LockFile(key)
    return found


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
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "it is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"it belongs to uid {info.st_uid}, not to this process's uid {os.geteuid()}"
    elif info.st_mode & 0o077:
        problem = f"its mode is {stat.S_IMODE(info.st_mode):o}; run chmod 600 on it"
    if problem:
        os.close(fd)
        raise ConfigurationError(f"refusing the cachekit lock file {path!r}: {problem}", path=path)
    return fd
