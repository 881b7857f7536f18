"""Striped, re-entrant thread locks: the in-process half of every cachekit lock.

A name (a key, a lock name) maps to one of a fixed number of *stripes* through
a hash that is the same in every process (``zlib.crc32``, never the salted
built-in ``hash``). Each stripe is a :class:`threading.RLock` plus a depth
count. Subclasses add a cross-process layer through two hooks,
:meth:`StripedLocks._acquire_outer` and :meth:`StripedLocks._release_outer`,
called only on a thread's first entry into a stripe and its last exit; see
:mod:`cachekit.lockfiles`.

Invariants:

- Stripes are taken in ascending order, so several names are locked without
  deadlock whatever order two callers name them in.
- The domains occupy consecutive ranges of stripes in the order
  ``COMPUTE < LOCKS < KEYS``, so the nestings cachekit itself performs
  (``get_or_compute`` writing its key, a ``lock`` held around an ``update``)
  also follow that order. A nesting against the order (an ``update`` whose
  ``fn`` takes a ``lock``) can only meet another such nesting on colliding
  stripes; it then ends in :class:`~cachekit.errors.LockTimeout`, not a hang.
- A thread that already holds a stripe enters it again at once: two names that
  share a stripe never deadlock their own thread.
- After ``fork`` the child starts with fresh, unheld stripes: a lock held by
  another thread of the parent at the moment of the fork would otherwise stay
  held forever in the child.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from .errors import LockTimeout

#: Stripes per domain. Two names collide with probability 1/STRIPES; a
#: collision costs only false contention, never a wrong result.
STRIPES: Final = 8192

#: Domains, in the order their stripes are taken.
COMPUTE: Final = 0  # single-flight of get_or_compute
LOCKS: Final = 1  # cachekit.lock
KEYS: Final = 2  # read-modify-write of a stored key


def stripe_of(domain: int, name: str) -> int:
    """The global stripe number of ``name`` in ``domain``; stable across processes."""
    return domain * STRIPES + zlib.crc32(name.encode("utf-8", "surrogatepass")) % STRIPES


class _Stripe:
    __slots__ = ("depth", "mutex", "owner")

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.depth = 0  # guarded by mutex: entries by the thread that holds it
        self.owner = 0  # ident of the thread that holds it; only that thread sets its own


class StripedLocks:
    """Re-entrant locks on stripes, shared by all threads of one process.

    Subclasses that also exclude other processes override the two hooks; this
    class alone excludes threads only.
    """

    def __init__(self) -> None:
        self._stripes: dict[int, _Stripe] = {}
        self._create = threading.Lock()
        self._held = threading.local()  # .count: stripe entries of this thread
        _live.add(self)

    def _stripe(self, number: int) -> _Stripe:
        stripe = self._stripes.get(number)
        if stripe is None:
            with self._create:
                stripe = self._stripes.setdefault(number, _Stripe())
        return stripe

    def stripe(self, domain: int, name: str) -> int:
        """The stripe of ``name`` in ``domain``; a subclass may map names its own way."""
        return stripe_of(domain, name)

    def _acquire_outer(self, number: int, deadline: float | None) -> bool:
        """Take the cross-process lock of a stripe; False if the deadline passes first."""
        return True

    def _release_outer(self, number: int) -> None:
        """Release what :meth:`_acquire_outer` took."""

    @contextmanager
    def hold(
        self, domain: int, names: Iterable[str], timeout: float | None, what: str
    ) -> Iterator[None]:
        """Hold the stripes of ``names`` for the duration of the block.

        ``timeout`` is the longest wait in seconds (``None``: no limit). On
        timeout :class:`LockTimeout` names ``what`` and nothing is held.
        """
        numbers = sorted({self.stripe(domain, name) for name in names})
        deadline = None if timeout is None else time.monotonic() + timeout
        taken: list[tuple[int, _Stripe]] = []
        try:
            for number in numbers:
                stripe = self._stripe(number)
                if not self._enter(number, stripe, deadline):
                    raise LockTimeout(
                        f"could not lock {what} within {timeout} s"
                        " (another thread or process holds it)",
                        name=what,
                        timeout=timeout,
                    )
                taken.append((number, stripe))
            yield
        finally:
            for number, stripe in reversed(taken):
                self._exit(number, stripe)

    def _enter(self, number: int, stripe: _Stripe, deadline: float | None) -> bool:
        if deadline is None:
            stripe.mutex.acquire()
        elif not stripe.mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        if stripe.depth == 0:
            try:
                taken = self._acquire_outer(number, deadline)
            except BaseException:
                stripe.mutex.release()
                raise
            if not taken:
                stripe.mutex.release()
                return False
        stripe.depth += 1
        stripe.owner = threading.get_ident()
        self._held.count = getattr(self._held, "count", 0) + 1
        return True

    def _exit(self, number: int, stripe: _Stripe) -> None:
        self._held.count -= 1
        stripe.depth -= 1
        try:
            if stripe.depth == 0:
                stripe.owner = 0
                self._release_outer(number)
        finally:
            stripe.mutex.release()

    def holds_any(self) -> bool:
        """Whether the calling thread holds any stripe."""
        return bool(getattr(self._held, "count", 0))

    def held_by_this_thread(self, number: int) -> bool:
        """Whether the calling thread holds stripe ``number``."""
        stripe = self._stripes.get(number)
        return stripe is not None and stripe.owner == threading.get_ident()

    def _after_fork_in_child(self) -> None:
        self._stripes = {}
        self._create = threading.Lock()
        self._held = threading.local()


_live: weakref.WeakSet[StripedLocks] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for locks in list(_live):
        locks._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_after_fork)
