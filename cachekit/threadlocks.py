"""Striped, re-entrant thread locks: the in-process half of every cachekit lock.

A name (a key, a lock name) maps to one of a fixed number of *stripes* through
a hash that is the same in every process (``zlib.crc32``, never the salted
built-in ``hash``). Each stripe is a :class:`threading.RLock` plus a depth
count. Subclasses add a cross-process layer through two hooks,
:meth:`StripedLocks._acquire_outer` and :meth:`StripedLocks._release_outer`,
called only on a thread's first entry into a stripe and its last exit; see
:mod:`cachekit.lockfiles` and :mod:`cachekit.redis.leases`.

Invariants:

- Stripes are taken in ascending order, so several names locked *at once*
  (one transaction's keys) never deadlock whatever order two callers name them in.
- The domains occupy consecutive ranges of stripes in the order
  ``COMPUTE < LOCKS < KEYS``, so the nestings cachekit itself performs
  (``get_or_compute`` writing its key, a ``lock`` held around an ``update``)
  take stripes in ascending order too. A nesting *against* that order (an
  ``update`` whose ``fn`` takes a ``lock``, a ``transaction`` whose block
  updates a key of a lower stripe) deadlocks with the opposite nesting of the
  same names in another thread or process: both wait until their wait runs
  out and raise :class:`~cachekit.errors.LockTimeout`. It never hangs, as
  long as the waits are bounded (``lock(timeout=None)`` is not).
- A thread that already holds a stripe enters it again at once: two names that
  share a stripe never deadlock their own thread.
- Every stripe taken is released, even when releasing another one fails.
- Each grant of a stripe of the ``LOCKS`` domain carries a *fencing token*: an
  integer larger than every earlier grant's token of that stripe, across
  every process that shares the lock (see :meth:`StripedLocks._fence`).
- Fork and gevent: a forked child starts with fresh, unheld stripes (a lock
  held by another thread of the parent at the fork would otherwise stay held
  forever in the child). Locks and thread-locals are never created in the
  fork hook, only marked stale there and created again on first use in the
  child (:class:`PerProcessValue`): under ``gunicorn -k gevent --preload``
  gevent patches ``threading`` after the fork, so only objects created after
  that are greenlet-aware. A lock created before the patch is a real OS lock
  and is only ever held for a few instructions, never across I/O.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final, Generic, TypeVar

from .errors import LeaseLost, LockTimeout
from .forking import at_fork

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Stripes per domain. Two names collide with probability 1/STRIPES; a
#: collision costs only false contention, never a wrong result.
STRIPES: Final = 8192

#: Domains, in the order their stripes are taken.
COMPUTE: Final = 0  # single-flight of get_or_compute
LOCKS: Final = 1  # cachekit.lock
KEYS: Final = 2  # read-modify-write of a stored key

#: Bumped in every forked child: a :class:`PerProcessValue` made in an older
#: generation belongs to the parent.
_generation = 0
#: Held only while a PerProcessValue's factory runs (which must do no I/O).
_making = threading.Lock()


class PerProcessValue(Generic[T]):
    """``factory()``, made on first use in each process and again after a fork.

    The factory runs in the process that uses the value, after gevent (if
    any) has patched ``threading``: so ``PerProcessValue(lambda:
    threading.local())`` is greenlet-local under gevent and thread-local
    otherwise. (Not ``PerProcessValue(threading.local)``: that captures the
    unpatched class at import.) The factory must not wait on anything
    (network I/O, another lock): it runs under a real lock.
    """

    __slots__ = ("_factory", "_made")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._made: tuple[int, T] | None = None

    def get(self) -> T:
        made = self._made
        if made is not None and made[0] == _generation:
            return made[1]
        with _making:
            made = self._made
            if made is None or made[0] != _generation:
                made = self._made = (_generation, self._factory())
        return made[1]


def stripe_of(domain: int, name: str) -> int:
    """The global stripe number of ``name`` in ``domain``; stable across processes."""
    return domain * STRIPES + zlib.crc32(name.encode("utf-8", "surrogatepass")) % STRIPES


def next_fence(last: int) -> int:
    """A fencing token larger than ``last`` and, if the clock is ahead, the time in microseconds.

    The clock floor keeps tokens increasing even if the record of ``last`` was lost.
    """
    return max(last + 1, time.time_ns() // 1000)


class _Stripe:
    __slots__ = ("depth", "mutex", "owner", "token")

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.depth = 0  # guarded by mutex: entries by the thread that holds it
        self.owner = 0  # ident of the thread that holds it; only that thread sets its own
        self.token = 0  # fencing token of the current grant (LOCKS domain)


class StripedLocks:
    """Re-entrant locks on stripes, shared by all threads of one process.

    Subclasses that also exclude other processes override the hooks; this
    class alone excludes threads only.
    """

    def __init__(self) -> None:
        self._stripes: dict[int, _Stripe] = {}
        self._held = PerProcessValue(
            lambda: threading.local()
        )  # .count: stripe entries of this thread
        self._fences: dict[int, int] = {}  # this process's last token per stripe
        _live.add(self)

    def _stripe(self, number: int) -> _Stripe:
        stripe = self._stripes.get(number)
        if stripe is None:  # setdefault is atomic: racing threads agree on one stripe
            stripe = self._stripes.setdefault(number, _Stripe())
        return stripe

    def stripe(self, domain: int, name: str) -> int:
        """The stripe of ``name`` in ``domain``; a subclass may map names its own way."""
        return stripe_of(domain, name)

    # -- hooks ---------------------------------------------------------------

    def _acquire_outer(self, number: int, deadline: float | None) -> int | None:
        """Take the cross-process lock of a stripe: its fencing token, or None past the deadline.

        The token matters for stripes of the LOCKS domain only (0 elsewhere).
        """
        return self._fence(number) if number // STRIPES == LOCKS else 0

    def _fence(self, number: int) -> int:
        """The next fencing token of a stripe; the caller holds it. Per process here."""
        token = self._fences[number] = next_fence(self._fences.get(number, 0))
        return token

    def _release_outer(self, number: int) -> bool:
        """Release what :meth:`_acquire_outer` took; False if it had been lost meanwhile."""
        return True

    def still_held(self, number: int) -> bool:
        """Whether this process still holds stripe ``number`` (a lease may say no)."""
        return True

    def _contended(self) -> None:
        """Note that this thread found a stripe held and had to wait (for the statistics)."""
        held = self._held.get()
        held.contended = getattr(held, "contended", 0) + 1

    def contentions(self) -> int:
        """How many times this thread has found a stripe held; compare before and after."""
        return int(getattr(self._held.get(), "contended", 0))

    # -- holding -------------------------------------------------------------

    @contextmanager
    def hold(
        self, domain: int, names: Iterable[str], timeout: float | None, what: str
    ) -> Iterator[int]:
        """Hold the stripes of ``names`` for the block; yield the last one's fencing token.

        ``timeout`` is the longest wait in seconds (``None``: no limit). On
        timeout :class:`LockTimeout` names ``what`` and nothing is held. If a
        stripe of the LOCKS domain turns out to have been lost while held (a
        lease taken over), leaving the block raises
        :class:`~cachekit.errors.LeaseLost`, unless the block itself raised.
        """
        numbers = sorted({self.stripe(domain, name) for name in names})
        deadline = None if timeout is None else time.monotonic() + timeout
        taken: list[tuple[int, _Stripe]] = []
        lost: list[int] = []
        failed = True
        try:
            token = 0
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
                token = stripe.token
            yield token
            failed = False
        finally:
            self._exit_all(taken, lost)
            if lost and failed:  # the block's own exception goes on; say what else happened
                log.warning("%s was lost while held, and the block raised", what)
        if lost and domain == LOCKS:
            raise LeaseLost(
                f"{what} was lost while held: another holder may have run at the same time"
                " (this holder was paused, or cut off from the lock's store, until its lease"
                " ran out; or the store lost the lease)",
                name=what,
            )

    def _exit_all(self, taken: list[tuple[int, _Stripe]], lost: list[int]) -> None:
        """Release every stripe in ``taken`` (last first); raise the first failure after."""
        error: BaseException | None = None
        for number, stripe in reversed(taken):
            try:
                if not self._exit(number, stripe):
                    lost.append(number)
            except BaseException as caught:  # release the others, then report it
                error = error or caught
        if error is not None:
            raise error

    def _enter(self, number: int, stripe: _Stripe, deadline: float | None) -> bool:
        if not stripe.mutex.acquire(blocking=False):
            self._contended()
            if deadline is None:
                stripe.mutex.acquire()
            elif not stripe.mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
        if stripe.depth == 0:
            try:
                token = self._acquire_outer(number, deadline)
            except BaseException:
                stripe.mutex.release()
                raise
            if token is None:
                stripe.mutex.release()
                return False
            stripe.token = token
        stripe.depth += 1
        stripe.owner = threading.get_ident()
        held = self._held.get()
        held.count = getattr(held, "count", 0) + 1
        return True

    def _exit(self, number: int, stripe: _Stripe) -> bool:
        """Leave a stripe once; False if its cross-process lock had been lost."""
        held = self._held.get()
        held.count = getattr(held, "count", 1) - 1  # (a child forked inside a block has none)
        stripe.depth -= 1
        try:
            if stripe.depth == 0:
                stripe.owner = 0
                return self._release_outer(number)
            return True
        finally:
            stripe.mutex.release()

    def holds_any(self) -> bool:
        """Whether the calling thread holds any stripe."""
        return bool(getattr(self._held.get(), "count", 0))

    def held_by_this_thread(self, number: int) -> bool:
        """Whether the calling thread holds stripe ``number``."""
        stripe = self._stripes.get(number)
        return stripe is not None and stripe.owner == threading.get_ident()

    def _after_fork_in_child(self) -> None:
        """Drop the parent's stripes; plain data only (see the module's note on gevent)."""
        self._stripes = {}
        self._fences = {}


_live: weakref.WeakSet[StripedLocks] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _generation, _making
    _generation += 1
    _making = threading.Lock()  # another thread of the parent may have held it at the fork
    for locks in list(_live):
        locks._after_fork_in_child()


at_fork(after_in_child=_after_fork_in_child)
