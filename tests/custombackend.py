"""A third party's backend family, added to cachekit in one registry line (tests only).

``TinyCache`` is a minimal cachelib backend (a dict of pickles, one process);
``TinyStrategy`` is its whole cachekit strategy: the four hooks of
:class:`cachekit.strategy.Strategy` over the default thread locks, and its
own ``diagnose``. ``conftest.BACKENDS`` registers it with
:func:`cachekit.backends.register_backend` and the contract suite runs on it.
"""

from __future__ import annotations

import datetime as dt
import pickle
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from cachelib import BaseCache

from cachekit.findings import WARNING, Finding
from cachekit.settings import Settings
from cachekit.strategy import Entry, Strategy


class TinyCache(BaseCache):
    """A dict of ``key -> (absolute expiry or 0, pickled value)``, guarded by one lock."""

    def __init__(self, default_timeout: int = 0) -> None:
        super().__init__(default_timeout)
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[int, bytes]] = {}

    def _live(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None or (found[0] and found[0] <= time.time()):
            return None
        return found[1]

    def get(self, key: str) -> Any:
        with self.lock:
            raw = self._live(key)
        return None if raw is None else pickle.loads(raw)

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        if isinstance(timeout, dt.timedelta):
            timeout = int(timeout.total_seconds())
        seconds = self._normalize_timeout(timeout)
        expires = int(time.time()) + seconds if seconds else 0
        with self.lock:
            self.entries[key] = (expires, pickle.dumps(value))
        return True

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        with self.lock:
            if self._live(key) is not None:
                return False
        return self.set(key, value, timeout)

    def delete(self, key: str) -> bool:
        with self.lock:
            return self.entries.pop(key, None) is not None

    def has(self, key: str) -> bool:
        with self.lock:
            return self._live(key) is not None

    def clear(self) -> bool:
        with self.lock:
            self.entries.clear()
        return True


class TinyStrategy(Strategy):
    """cachekit on :class:`TinyCache`: thread locks (the default), the dict as the store."""

    name = "TinyCache"
    per_process = True

    @classmethod
    def diagnose(cls, backend: Any, settings: Settings) -> list[Finding]:
        return [
            Finding(WARNING, "TinyCache is a test backend", "use it in tests only"),
            *super().diagnose(backend, settings),
        ]

    def _load(self, key: str) -> Entry | None:
        backend: TinyCache = self.backend
        with backend.lock:
            found = backend.entries.get(key)
        if found is None or (found[0] and found[0] <= time.time()):
            return None
        return Entry(self._decode(key, found[1]), found[0], found[1])

    def _dumps(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def _loads(self, raw: bytes) -> Any:
        return pickle.loads(raw)

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        backend: TinyCache = self.backend
        with backend.lock:
            for key, (raw, expires) in writes.items():
                backend.entries[key] = (expires, raw)
            for key in deletes:
                backend.entries.pop(key, None)
