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
threshold is not 0.

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
import stat
import struct
import time
from collections.abc import Collection, Mapping
from typing import Any, Final

from cachelib.serializers import BaseSerializer

from .compat import filesystem_parts
from .errors import ConfigurationError, CorruptValue, StorageError, WriteError
from .lockfiles import lock_file, stat_directory
from .settings import DEFAULTS, Settings
from .strategy import Entry, Strategy

_HEADER: Final = struct.Struct("I")
TEMP_SUFFIX: Final = ".cachekit.__wz_cache"
#: cachelib's suffix of management files: clear(), pruning and counting skip them.
CACHELIB_SKIPS: Final = ".__wz_cache"

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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
        super().__init__(backend, lock_file(directory), settings)
        self.directory = directory
        self._filename = parts.filename
        self._mode = parts.mode or 0o600
        self._pickle = _uses_pickle(backend.serializer)

    def _path(self, key: str) -> str:
        """The key's file, under the directory's real path (resolved once, at first use).

        The backend's own name for it is relative to the directory however it
        was spelled; only its last part is kept, so that a symlink changed or
        a working directory left later cannot move cachekit's writes away
        from its lock.
        """
        return os.path.join(self.directory, os.path.basename(self._filename(key)))

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
        if self._pickle:
            return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        out = io.BytesIO()
        self.backend.serializer.dump(value, out)
        return out.getvalue()

    def _loads(self, raw: bytes) -> Any:
        if self._pickle:
            return pickle.loads(raw)
        return self.backend.serializer.load(io.BytesIO(raw))

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
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
