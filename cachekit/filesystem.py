"""FileSystemCache: atomic operations with a lock file, in cachelib's own file format.

How ``incr`` works here, start to end: take the key's stripe in the lock file
(:mod:`cachekit.lockfiles`), read the key's file, decode it, write the new
value to a temporary file beside it, swap the two, release.

File format, unchanged from cachelib's FileSystemCache so that ``cache.get``
and every other Flask-Caching feature work on the same directory: the file
``<cache_dir>/<hash of key>`` holds a native unsigned 32-bit absolute expiry
(0: never) followed by the pickled value (or the backend serializer's form).

Write path and what it guarantees:

- The new value is written in full to ``<file>.cachekit.__wz_cache`` (the
  suffix cachelib itself uses for temporary files, so ``clear()`` and pruning
  skip it) and only then swapped in with ``renameat2(RENAME_EXCHANGE)``, after
  which the old file, now under the temporary name, is unlinked. A reader
  opening the key's path at any moment finds a complete old or new value,
  never a missing or partial one. The exchange costs a fraction of a plain
  ``rename`` over an existing file on ext4, which flushes the replaced file's
  data; where the exchange is not supported, ``os.replace`` is used, with the
  same guarantee.
- The temporary name is fixed per key, and only the holder of the key's lock
  writes it, so a process killed mid-write leaves at most one stale temporary
  file per key, removed by the next write of that key.
- A failure before the swap (disk full, read-only directory, a value that
  cannot be serialized) leaves the old value in place and raises.
- Nothing is fsynced: a value survives the crash of any process as soon as
  the operation returns, but a crash of the machine can lose the last seconds
  of updates, as for any page-cached write. A file the crash left truncated
  is reported as :class:`~cachekit.errors.CorruptValue`, never read as a miss.

A corrupt file raises :class:`~cachekit.errors.CorruptValue` naming the key
and the file, where cachelib would log and return ``None`` (and a counter would
restart at 1).

Pruning: cachelib prunes a directory over ``CACHE_THRESHOLD`` files, removing
entries that never expire first, so cachekit refuses a FileSystemCache whose
threshold is not 0. With 0 cachelib never deletes an expired file, so
cachekit sweeps instead: every ``SWEEP_EVERY`` writes a process examines the
next ``SWEEP_BATCH`` names of the directory (going on where its last sweep
stopped) and deletes the entries that have expired, with the temporary files
of writers that died. It takes each file's key stripe only on a try, and the
stripe of a key is that of its file's name (the sweep knows no key), so a
file is deleted only while no cachekit writer holds it; a plain ``cache.set``
that replaced the file meanwhile (cachelib takes no lock) is put back, and so
is a live value a killed sweep left aside. (A plain ``cache.delete`` of that
set's value, landing within the same microseconds, can be undone by the put
back: losing no set costs that.)

Security: a directory of pickles is code execution for whoever can write to
it, so cachekit refuses a cache directory owned by another user or writable by
group or others, opens entries without following symlinks, and writes them
with the backend's mode (0600 by default).
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import pickle
import re
import stat
import struct
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

from cachelib.serializers import BaseSerializer

from .compat import filesystem_parts
from .errors import ConfigurationError, CorruptValue, LockTimeout, StorageError, WriteError
from .findings import PROBLEM, Finding
from .lockfiles import lock_file, stat_directory
from .settings import DEFAULTS, Settings
from .strategy import Entry, Strategy
from .threadlocks import KEYS, PerProcessValue

_HEADER: Final = struct.Struct("I")
TEMP_SUFFIX: Final = ".cachekit.__wz_cache"
#: cachelib's suffix of management files: clear(), pruning and counting skip them.
CACHELIB_SKIPS: Final = ".__wz_cache"

#: The sweep's cadence and reach (see the module's docstring). A sweep that finds more
#: than a quarter of its names expired runs again at the next write, so the sweep keeps
#: up with a flood of one-off keys (a name examined per write and more) and costs a few
#: microseconds per write otherwise (measured: 52 to 54 us per FileSystemCache incr).
SWEEP_EVERY: Final = 256
SWEEP_BATCH: Final = 64
#: How many keys' file names a strategy remembers (a hash each) before it starts over.
_NAMES_KEPT: Final = 4096
#: Where the sweep puts a file while it checks that the file is the expired one it read.
SWEPT_SUFFIX: Final = ".cachekit-swept.__wz_cache"
#: cachelib's entry names: a hex digest of the key (md5 unless CACHE_OPTIONS says otherwise).
_ENTRY_NAME: Final = re.compile(r"[0-9a-f]{16,128}")

_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    path, fd = ctypes.c_char_p, ctypes.c_int
    function.argtypes = [fd, path, fd, path, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _exchange(tmp: str, path: str) -> bool:
    """Swap ``tmp`` and ``path``; False if ``path`` does not exist or swapping is unsupported."""
    global _renameat2
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        _renameat2 = None  # this kernel or filesystem cannot exchange: use rename from now on
    elif code != errno.ENOENT:
        raise OSError(code, os.strerror(code), path)
    return False


#: How the sweep opens a file: never through a symlink, never waiting (a FIFO).
_SWEEP_OPEN: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _expired_entry(fd: int, now: float) -> os.stat_result | None:
    """The open file's status if it is a regular file whose header expired before ``now``."""
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        return None
    header = os.pread(fd, _HEADER.size, 0)
    if len(header) < _HEADER.size:
        return None  # (truncated: left for CorruptValue to name, never swept)
    (expires,) = _HEADER.unpack_from(header)
    return found if expires and expires < now else None


def _expired(path: str, now: float) -> bool:
    """Whether the entry file at ``path`` says it expired before ``now`` (False if unreadable)."""
    try:
        fd = os.open(path, _SWEEP_OPEN)
    except OSError:
        return False
    try:
        return _expired_entry(fd, now) is not None
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _looks_like_lock(name: str) -> bool:
    return name.endswith(".lock") or name.startswith(".lock")


def check_private_directory(directory: str) -> None:
    """Refuse a cache directory that someone else could write to.

    Its files are pickles: whoever can write one can run code in every worker
    that reads it. So the directory must belong to this process's user and be
    writable by no one else.
    """
    info = stat_directory(directory)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"it belongs to uid {info.st_uid}, not to this process's uid {os.geteuid()}"
    elif info.st_mode & 0o022:
        problem = (
            f"its mode {stat.S_IMODE(info.st_mode):o} lets others write pickles into it;"
            f" run chmod 700 {directory}"
        )
    if problem:
        raise ConfigurationError(
            f"refusing the cache directory {directory!r}: {problem}", path=directory
        )


def _uses_pickle(serializer: Any) -> bool:
    kind = type(serializer)
    return kind.dump is BaseSerializer.dump and kind.load is BaseSerializer.load


class FileSystemStrategy(Strategy):
    """Atomic operations on a cachelib / Flask-Caching ``FileSystemCache``."""

    name = "FileSystemCache"
    signing = "file"  # the envelope after cachelib's expiry header (cachekit.signing)

    @classmethod
    def diagnose(cls, backend: Any, settings: Settings) -> list[Finding]:
        """Pruning, a directory others can write, foreign lock files or folders in it."""
        findings = super().diagnose(backend, settings)
        parts = filesystem_parts(backend)
        directory = os.path.realpath(parts.path)
        if parts.threshold:
            findings.append(
                Finding(
                    PROBLEM,
                    f"CACHE_THRESHOLD={parts.threshold}"
                    + (
                        " (Flask-Caching's default, when CACHE_THRESHOLD is not set)"
                        if parts.threshold == 500
                        else ""
                    )
                    + ": past that many files FileSystemCache deletes entries, those that"
                    " never expire first",
                    "set CACHE_THRESHOLD=0",
                )
            )
        try:
            check_private_directory(directory)  # the very check cachekit makes at first use
        except ConfigurationError as error:
            findings.append(
                Finding(
                    PROBLEM,
                    f"{error}; whoever can write its pickles can run code in every worker",
                    f"chown it to uid {os.geteuid()} (the app's user) and chmod 700 {directory}",
                )
            )
        try:  # (scandir: the kind of each entry comes with its name, no stat per entry at boot)
            with os.scandir(directory) as entries:
                foreign = sorted(
                    entry.name
                    for entry in entries
                    if not entry.name.endswith(CACHELIB_SKIPS)
                    and (not entry.is_file() or _looks_like_lock(entry.name))
                )
        except OSError:
            return findings  # a missing or unreadable directory was reported just above
        if foreign:
            findings.append(
                Finding(
                    PROBLEM,
                    f"the cache directory {directory} holds lock files or folders"
                    f" ({', '.join(foreign[:5])}): FileSystemCache treats everything there as"
                    " entries, so clear() and pruning delete them (and clear() fails on"
                    " folders)",
                    "keep other locks outside CACHE_DIR (cachekit's own lock file ends in"
                    f" {CACHELIB_SKIPS}, which cachelib skips)",
                )
            )
        return findings

    def __init__(self, backend: Any, settings: Settings = DEFAULTS) -> None:
        parts = filesystem_parts(backend)
        directory = os.path.realpath(parts.path)  # identity: never how the path is spelled
        if parts.threshold != 0:
            raise ConfigurationError(
                f"FileSystemCache at {directory!r} has CACHE_THRESHOLD={parts.threshold}:"
                " past that many files it deletes entries, those that never expire first,"
                " which would silently reset cachekit state. Set CACHE_THRESHOLD=0.",
                setting="CACHE_THRESHOLD",
            )
        check_private_directory(directory)
        super().__init__(backend, settings, locks=lock_file(directory))
        self.directory = directory
        self._filename = parts.filename
        self._mode = parts.mode or 0o600
        self._pickle = _uses_pickle(backend.serializer)
        self._names_of: dict[str, str] = {}  # key -> its file's name, see _file_name
        self._writes = 0  # this process's commits, for the sweep's cadence
        # Only ever tried: one sweep at a time in a process, never a wait. Per process: a
        # child forked during a sweep must not inherit it held.
        self._sweeping = PerProcessValue(lambda: threading.Lock())
        self._names: Iterator[os.DirEntry[str]] | None = None  # where the sweep goes on
        self._names_closer: weakref.finalize[Any, Any] | None = None
        self._names_pid = 0

    def _file_name(self, key: str) -> str:
        """The name of ``key``'s file in the directory (a hash of it: remembered, bounded)."""
        name = self._names_of.get(key)
        if name is None:
            if len(self._names_of) >= _NAMES_KEPT:
                self._names_of.clear()
            name = self._names_of[key] = os.path.basename(self._filename(key))
        return name

    def _hold(
        self, domain: int, names: Collection[str], timeout: float | None, what: str
    ) -> AbstractContextManager[int]:
        """Hold a key's stripe by its file's name, which the sweep can know too."""
        if domain == KEYS:
            names = [self._file_name(name) for name in names]
        return self._timed_hold(domain, names, timeout, what)

    def _upkeep(self) -> None:
        """Sweep expired files every ``SWEEP_EVERY`` writes of this process (outside every lock)."""
        if self._writes >= SWEEP_EVERY:
            self._writes = 0
            swept = self.sweep()
            if swept:
                self.stats.count("swept", swept)
            if swept * 4 > SWEEP_BATCH:  # a flood of expired files: again next write
                self._writes = SWEEP_EVERY

    def sweep(self, batch: int = SWEEP_BATCH) -> int:
        """Examine the directory's next ``batch`` names and delete what expired; how many.

        Never raises and never waits: a file whose stripe is held, or that
        cannot be read, is left for a later sweep. Another thread's sweep in
        progress makes this one return 0 at once.
        """
        sweeping = self._sweeping.get()
        if not sweeping.acquire(blocking=False):
            return 0
        try:
            deleted = 0
            now = time.time()
            try:
                names = self._next_names(batch)
            except OSError:
                return 0
            for name in names:
                try:
                    deleted += self._sweep_name(name, now)
                except OSError:
                    continue
            return deleted
        finally:
            sweeping.release()

    def _next_names(self, batch: int) -> list[str]:
        """The next ``batch`` names of the directory, starting over after its end."""
        if self._names_pid != os.getpid():  # a fork's child reads the directory afresh
            self._forget_names()
            self._names_pid = os.getpid()
        names: list[str] = []
        for _ in range(2):
            if self._names is None:
                self._names = os.scandir(self.directory)
                self._names_closer = weakref.finalize(self, self._names.close)
            for entry in self._names:
                if not entry.is_file(follow_symlinks=False):
                    continue  # (a directory, a symlink, a FIFO: never cachelib's or cachekit's)
                names.append(entry.name)
                if len(names) >= batch:
                    return names
            self._forget_names()
            if names:
                break
        return names

    def _forget_names(self) -> None:
        if self._names is not None:
            if self._names_closer is not None:
                self._names_closer()  # (closes this process's copy only: a child's is its own)
            self._names = None

    def _sweep_name(self, name: str, now: float) -> int:
        """Delete ``name`` if it is an expired entry or a dead writer's leftover; 1 if so."""
        for suffix in (TEMP_SUFFIX, SWEPT_SUFFIX):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                if not _ENTRY_NAME.fullmatch(base):
                    return 0
                leftover = os.path.join(self.directory, name)
                try:
                    with self._locks.hold(KEYS, (base,), 0, "the sweep"):  # (no writer is on it)
                        if suffix == SWEPT_SUFFIX and not _expired(leftover, time.time()):
                            self._put_back(leftover, os.path.join(self.directory, base))
                        os.unlink(leftover)
                except (LockTimeout, FileNotFoundError):
                    return 0
                return 1
        if not _ENTRY_NAME.fullmatch(name):
            return 0
        path = os.path.join(self.directory, name)
        if not _expired(path, now):  # (a first look without the lock: most files are live)
            return 0
        try:
            with self._locks.hold(KEYS, (name,), 0, "the sweep"):
                return self._unlink_expired(path)
        except LockTimeout:
            return 0

    @staticmethod
    def _put_back(aside: str, path: str) -> None:
        """Link the live value moved to ``aside`` back to ``path``, unless a newer one is there."""
        try:
            os.link(aside, path)
        except FileExistsError:
            pass

    @classmethod
    def _unlink_expired(cls, path: str) -> int:
        """Unlink the entry at ``path`` if it has expired; its stripe is held. 1 if so.

        No cachekit writer can replace it now, but cachelib's own ``set``
        takes no lock: the file is moved aside first, and put back unless it
        is the very file found expired. That file stays open until the
        comparison, so that its inode number cannot be reused meanwhile by a
        file created in its place.
        """
        try:
            fd = os.open(path, _SWEEP_OPEN)
        except FileNotFoundError:
            return 0
        try:
            # The clock read again under the stripe, not the batch's: a value written since
            # the batch began (the clock stepped back meanwhile) is judged by the clock now.
            found = _expired_entry(fd, time.time())
            if found is None:
                return 0
            aside = path + SWEPT_SUFFIX
            os.rename(path, aside)
            moved = os.lstat(aside)
            if (moved.st_dev, moved.st_ino) != (found.st_dev, found.st_ino):
                cls._put_back(aside, path)  # a newer value was set meanwhile
                os.unlink(aside)
                return 0
            os.unlink(aside)
            return 1
        finally:
            os.close(fd)

    def _path(self, key: str) -> str:
        """The key's file, under the directory's real path (resolved once, at first use).

        The backend's own name for it is relative to the directory however it
        was spelled; only its last part is kept, so that a symlink changed or
        a working directory left later cannot move cachekit's writes away
        from its lock.
        """
        return os.path.join(self.directory, self._file_name(key))

    def _load(self, key: str) -> Entry | None:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            hint = (
                "; it is a symlink, which cachekit never follows: remove it"
                if (error.errno == errno.ELOOP)
                else ""
            )
            raise StorageError(
                f"cannot read key {key!r} from {path}: {error.strerror}{hint}",
                key=key,
                path=path,
            ) from error
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        except OSError as error:
            raise StorageError(
                f"cannot read key {key!r} from {path}: {error.strerror}", key=key, path=path
            ) from error
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) < _HEADER.size:
            raise CorruptValue(
                f"key {key!r}: {path} is truncated ({len(data)} bytes); it was left as it is",
                key=key,
                path=path,
            )
        (expires,) = _HEADER.unpack_from(data)
        if expires and expires < time.time():
            return None
        raw = data[_HEADER.size :]
        return Entry(self._decode(key, raw, path), expires, raw)

    def _dumps(self, value: Any) -> bytes:
        if self.form is not None:  # signed (cachekit.signing): the installed serializer's form
            return self.form.encode(value)  # type: ignore[no-any-return]
        if self._pickle:
            return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        out = io.BytesIO()
        self.backend.serializer.dump(value, out)
        return out.getvalue()

    def _loads(self, raw: bytes) -> Any:
        if self.form is not None:  # checked before anything is unpickled
            return self.form.decode(raw)
        if self._pickle:
            return pickle.loads(raw)
        return self.backend.serializer.load(io.BytesIO(raw))

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        self._writes += 1
        staged: list[tuple[str, str, str]] = []
        try:
            for key, (raw, expires) in writes.items():
                path = self._path(key)
                staged.append((key, self._stage(key, path, _HEADER.pack(expires) + raw), path))
        except BaseException:
            for _, tmp, _ in staged:
                _unlink_quietly(tmp)
            raise
        for key, tmp, path in staged:
            try:
                if _exchange(tmp, path):
                    _unlink_quietly(tmp)
                else:
                    os.replace(tmp, path)
            except OSError as error:
                _unlink_quietly(tmp)
                raise WriteError(
                    f"cannot replace key {key!r} at {path}: {error.strerror}", key=key, path=path
                ) from error
        for key in deletes:
            path = self._path(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise WriteError(
                    f"cannot delete key {key!r} at {path}: {error.strerror}", key=key, path=path
                ) from error

    def _stage(self, key: str, path: str, data: bytes) -> str:
        """Write ``data`` in full to the key's temporary file and return its path."""
        tmp = path + TEMP_SUFFIX
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, self._mode)
            except FileExistsError:  # left by a writer that died: only we may write it now
                os.unlink(tmp)
                fd = os.open(tmp, flags, self._mode)
            try:
                os.fchmod(fd, self._mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as error:
            _unlink_quietly(tmp)
            raise WriteError(
                f"cannot write key {key!r} to {tmp}: {error.strerror}; the old value is kept",
                key=key,
                path=tmp,
            ) from error
        return tmp
