"""Per-process and per-request resources: the other half of sharing state under gunicorn.

A client object (a database connection pool, a pub/sub connection, an SDK
client) must not be shared across a fork: two processes would read each
other's replies on one socket. Nor should each request build its own.

- :class:`PerProcess` creates its object lazily, once per process: the first
  caller in a process builds it (the others wait for it, however many threads
  ask at once), and a process forked afterwards (``gunicorn --preload``, a
  recycled worker) builds its own instead of using its parent's.
- :class:`PerRequest` creates its object at most once per request (per Flask
  application context), keeps it on ``flask.g`` and closes it at teardown.

>>> import itertools
>>> made = itertools.count(1)
>>> client = PerProcess(lambda: f"client {next(made)}")
>>> client(), client()
('client 1', 'client 1')
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flask import Flask, g

from .forking import at_fork
from .threadlocks import PerProcessValue

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``factory()`` called once per process, lazily, safely when threads race for it.

    A forked child never touches its parent's object (its sockets belong to
    the parent): it drops the reference and builds its own on first use. The
    lock that makes racing threads wait for one factory call is itself made
    in the child on first use, so under gevent it is a gevent lock (the
    factory may do I/O while it is held).
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = PerProcessValue(lambda: threading.Lock())
        self._pid = 0
        self._value: T | None = None
        _instances.add(self)

    def __call__(self) -> T:
        if self._pid == os.getpid():
            return self._value  # type: ignore[return-value]
        with self._lock.get():
            if self._pid != os.getpid():
                self._value = self._factory()
                self._pid = os.getpid()
        return self._value  # type: ignore[return-value]

    def _after_fork_in_child(self) -> None:
        self._pid = 0
        self._value = None


_instances: weakref.WeakSet[PerProcess[Any]] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for instance in list(_instances):
        instance._after_fork_in_child()


at_fork(after_in_child=_reset_after_fork)


class PerRequest(Generic[T]):
    """``factory()`` at most once per request, kept on ``g``, closed at teardown.

    Register it with the app once: ``resource.init_app(app)``; it then closes
    the object with ``close(obj)`` (default: ``obj.close()`` if it has one)
    when the application context ends, even if the request failed.
    """

    def __init__(
        self, name: str, factory: Callable[[], T], close: Callable[[T], None] | None = None
    ) -> None:
        self._attribute = f"_cachekit_resource_{name}"
        self._factory = factory
        self._close = close

    def init_app(self, app: Flask) -> None:
        app.teardown_appcontext(self._teardown)

    def __call__(self) -> T:
        if self._attribute not in g:
            setattr(g, self._attribute, self._factory())
        return getattr(g, self._attribute)  # type: ignore[no-any-return]

    def _teardown(self, error: BaseException | None) -> None:
        value = g.pop(self._attribute, None)
        if value is None:
            return
        if self._close is not None:
            self._close(value)
        elif callable(getattr(value, "close", None)):
            value.close()
