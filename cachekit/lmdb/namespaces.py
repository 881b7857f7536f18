"""One LMDB store, one pid namespace: a store open from two is refused, clearly, at open.

LMDB tells its readers apart by process id: each reader slot in ``lock.mdb``
records a pid, and a process marks itself alive with a POSIX lock on the byte
of ``lock.mdb`` at its pid. A pid is unique only within a pid namespace.
Processes of two containers that share the store's directory (a volume) but
not a pid namespace collide: two with the same pid (gunicorn's master is pid 1
in each) cannot both open the store (``mdb_txn_begin: Resource temporarily
unavailable``); a dead reader's slot is judged alive because a stranger has
its pid, so LMDB cannot reuse the pages that reader pinned and the store
fills; and a live reader's slot may be freed under it.

So every process that opens a store claims its pid namespace in the store's
directory, and refuses to open it while another namespace holds a claim:

- The claim is a shared ``flock`` on ``.cachekit-pidns-<namespace inode>.lock``, held
  for the process's life (the descriptor is never closed; a forked child
  shares it, and it ends with the last process holding it, whatever kills
  them).
- A claim is made under an exclusive ``flock`` of ``.cachekit-pidns.lock``, so two
  namespaces opening at once are serialized: the second sees the first.
- Another namespace's file that can be locked exclusively is a claim whose
  processes are all gone: it is deleted. One that cannot is a live claim:
  :class:`~cachekit.errors.ConfigurationError`, nothing opened.
- Where this process's pid namespace cannot be read (no ``/proc``), no claim
  is made and nothing is refused.
- No fork happens during a claim (an at-fork hook waits for it): a child
  would inherit the guard's exclusive ``flock`` and hold it for its life.
  The guard is waited for :data:`GUARD_WAIT` seconds at most (a process
  stopped inside its claim): then :class:`~cachekit.errors.StorageError`.
- Claims are kept per directory and pid namespace: a directory made again,
  or a process that moved to another pid namespace, claims again.
- A rolling update that starts the new container before the old one has
  stopped (two pid namespaces on one volume) is refused until the old one's
  processes are gone, as it must be: their pids would collide.

``flock`` works between pid namespaces of one kernel: it is what containers
on one host share. Stores on network file systems are refused before this
(:data:`cachekit.lmdb.store.NETWORK_FILESYSTEMS`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from typing import Final

from ..errors import ConfigurationError, StorageError
from ..forking import at_fork

#: The lock file that serializes claims; claims are ``PREFIX<inode>.lock``.
GUARD: Final = ".cachekit-pidns.lock"
PREFIX: Final = ".cachekit-pidns-"

#: The longest wait for another process's claim in progress, in seconds.
GUARD_WAIT: Final = 10.0

#: (directory's device, inode, pid namespace) -> the descriptor holding this process's claim.
_claims: dict[tuple[int, int, int], int] = {}
_claiming = threading.Lock()


def _before_fork() -> None:
    _claiming.acquire()  # no fork in the middle of a claim


def _after_fork_in_parent() -> None:
    _claiming.release()


def _after_fork_in_child() -> None:
    global _claiming
    _claiming = threading.Lock()


at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def pid_namespace() -> int | None:
    """The inode of this process's pid namespace (unique on this host), or None if unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def claim(directory: str, identity: tuple[int, int]) -> None:
    """Claim the store in ``directory`` for this process's pid namespace, once per process.

    :class:`ConfigurationError` if a process of another pid namespace has it open.
    """
    namespace = pid_namespace()
    if namespace is None:
        return
    claimed = (*identity, namespace)
    if claimed in _claims:
        return
    with _claiming:
        if claimed not in _claims:
            _claims[claimed] = _claim(directory, namespace)


def _claim(directory: str, namespace: int) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        guard = _open(os.path.join(directory, GUARD), flags)
    except OSError as error:
        raise _unwritable(directory, error) from error
    try:
        _lock_guard(guard, directory)
        mine = f"{PREFIX}{namespace}.lock"
        held = _open(os.path.join(directory, mine), flags)
        try:
            fcntl.flock(held, fcntl.LOCK_SH)
            for name in sorted(os.listdir(directory)):
                if name.startswith(PREFIX) and name.endswith(".lock") and name != mine:
                    if not _gone(os.path.join(directory, name)):
                        raise _refusal(directory, name)
        except BaseException:
            os.close(held)
            with contextlib.suppress(OSError):  # no claim left behind if none holds it
                _gone(os.path.join(directory, mine))
            raise
        return held
    except OSError as error:
        raise _unwritable(directory, error) from error
    finally:
        os.close(guard)  # (releases the guard's flock)


def _unwritable(directory: str, error: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot open the LMDB store in {directory!r}: cachekit keeps its pid namespace claim"
        f" there ({PREFIX}<namespace>.lock) and cannot: {error.strerror}. The directory must"
        " be writable by the app's user",
        path=directory,
    )


def _lock_guard(guard: int, directory: str) -> None:
    """Take the guard's exclusive ``flock``, waiting :data:`GUARD_WAIT` s at most."""
    deadline = time.monotonic() + GUARD_WAIT
    pause = 0.001
    while True:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise StorageError(
                f"cannot open the LMDB store in {directory!r}: another process has held"
                f" {os.path.join(directory, GUARD)!r} for {GUARD_WAIT:.0f} s while it opened"
                " the store (stopped, or frozen with its container)",
                path=directory,
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _gone(path: str) -> bool:
    """Whether no process holds the claim at ``path`` (then deleted); called under the guard."""
    try:
        other = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return False
        os.unlink(path)  # every process of that namespace is gone: a stale claim
        return True
    finally:
        os.close(other)


def _refusal(directory: str, name: str) -> ConfigurationError:
    namespace = name.removeprefix(PREFIX).removesuffix(".lock")
    return ConfigurationError(
        f"refusing the LMDB store in {directory!r}: processes of another pid namespace"
        f" (pid:[{namespace}], another container) have it open, and LMDB tells its readers"
        " apart by pid, which is unique only within one pid namespace: two processes with"
        " one pid cannot both use the store, and a dead reader may be taken for a live one."
        " Run every process that shares this directory in one pid namespace (docker run"
        " --pid=host or --pid=container:<name>; docker compose pid: 'service:<name>'; in"
        " Kubernetes, one pod with shareProcessNamespace), or use RedisCache to share state"
        " between containers.",
        path=directory,
    )


def _open(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
