"""Polling with back-off towards a deadline: how every cachekit waiter waits.

Neither a POSIX record lock nor a Redis lease offers a timed wait, so a
waiter tries, sleeps a jittered delay that doubles from ``first`` up to
``cap``, and tries again until its deadline (``None``: no deadline). Under
gevent ``time.sleep`` is patched, so waiting yields to other greenlets.
"""

from __future__ import annotations

import random
import time


class Backoff:
    """The delays between a waiter's tries; one instance per wait."""

    __slots__ = ("_cap", "_deadline", "_delay", "_first")

    def __init__(self, first: float, cap: float, deadline: float | None) -> None:
        self._first = first
        self._cap = cap
        self._deadline = deadline
        self._delay = 0.0

    @property
    def started(self) -> bool:
        """Whether this waiter has slept (or tried to) at least once."""
        return self._delay > 0

    def sleep(self) -> bool:
        """Sleep the next delay, never past the deadline; False (at once) if it has passed."""
        delay = self._delay = min(self._cap, self._delay * 2 or self._first)
        delay *= random.uniform(0.5, 1.5)
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                return False
            delay = min(delay, left)
        time.sleep(delay)
        return True
