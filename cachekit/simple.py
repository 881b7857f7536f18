"""SimpleCache: atomic operations with thread locks, for one process only.

How ``incr`` works here: take the key's stripe (:mod:`cachekit.threadlocks`),
read the ``(expires, pickled value)`` pair from the backend's dict under the
backend's own lock, write the new pair under that lock, release.

SimpleCache keeps its entries in the memory of one process. Several worker
processes would each count on their own copy, so the helpers raise
:class:`~cachekit.errors.PerProcessBackend` when the backend is used in a
process other than the one that first used it through cachekit (it was
inherited across a fork), or from a request whose WSGI server runs several
processes (``wsgi.multiprocess``).

Pruning: SimpleCache turns a threshold of 0 into 500 and, past it, removes
entries that never expire first (its ``_remove_expired`` even counts them as
expired). The strategy therefore wraps the instance's ``_prune`` so that the
keys cachekit wrote are set aside while it runs: cachekit state is never
evicted, while the threshold still bounds everything else.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from cachelib.serializers import BaseSerializer
from flask import has_request_context, request

from .compat import simple_parts, wrap_simple_prune
from .errors import PerProcessBackend
from .findings import PER_PROCESS, PROBLEM, Finding
from .settings import DEFAULTS, Settings
from .strategy import Entry, Strategy
from .threadlocks import StripedLocks

_ADVICE = (
    "SimpleCache keeps a separate copy in each process; use CACHE_TYPE=FileSystemCache"
    " (with CACHE_DIR and CACHE_THRESHOLD=0) on one machine, or CACHE_TYPE=RedisCache"
)


class SimpleStrategy(Strategy):
    """Atomic operations on a cachelib / Flask-Caching ``SimpleCache``."""

    name = "SimpleCache"
    per_process = True
    unsigned_reason = (
        "SimpleCache keeps its values in the memory of one process: nothing outside that"
        " process can write them, and whoever can write its memory already runs code there,"
        " so its values are not signed"
    )

    @classmethod
    def diagnose(cls, backend: Any, settings: Settings) -> list[Finding]:
        """SimpleCache is right for one process only: a per-process finding."""
        return [
            Finding(
                PROBLEM,
                "SimpleCache keeps a separate copy in each worker process",
                "set CACHE_TYPE=FileSystemCache (one machine) or RedisCache; SimpleCache"
                " only suits a single process",
                PER_PROCESS,
            ),
            *super().diagnose(backend, settings),
        ]

    def __init__(self, backend: Any, settings: Settings = DEFAULTS) -> None:
        super().__init__(backend, settings, locks=StripedLocks())
        parts = simple_parts(backend)
        self._lock = parts.lock
        self._entries = parts.entries
        self._pid = os.getpid()
        self._managed: set[str] = set()
        kind = type(backend.serializer)
        self._pickle = kind.dumps is BaseSerializer.dumps and kind.loads is BaseSerializer.loads
        self._protect_from_pruning()

    def check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise PerProcessBackend(
                f"this SimpleCache was first used by process {self._pid} and is now used by"
                f" process {os.getpid()}, a fork of it: {_ADVICE}",
                setting="CACHE_TYPE",
            )
        if has_request_context() and request.environ.get("wsgi.multiprocess"):
            raise PerProcessBackend(
                f"the WSGI server runs several worker processes (wsgi.multiprocess): {_ADVICE}",
                setting="CACHE_TYPE",
            )

    def _protect_from_pruning(self) -> None:
        lock, entries, managed = self._lock, self._entries, self._managed

        def prune_except_cachekit_keys(prune: Callable[[], None]) -> None:
            with lock:
                now = time.time()
                kept = {}
                for key in managed:
                    item = entries.pop(key, None)
                    if item is not None and (item[0] == 0 or item[0] > now):
                        kept[key] = item
                managed.intersection_update(kept)  # (what expired is gone: forget its name)
                try:
                    prune()
                finally:
                    entries.update(kept)

        wrap_simple_prune(self.backend, prune_except_cachekit_keys)

    def _load(self, key: str) -> Entry | None:
        with self._lock:
            item = self._entries.get(key)
        if item is None:
            return None
        expires, raw = item
        if expires and expires <= time.time():
            return None
        return Entry(self._decode(key, raw), expires, raw)

    def _dumps(self, value: Any) -> bytes | None:
        if self._pickle:
            return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        return self.backend.serializer.dumps(value)  # type: ignore[no-any-return]

    def _loads(self, raw: bytes) -> Any:
        return pickle.loads(raw) if self._pickle else self.backend.serializer.loads(raw)

    def _commit(
        self,
        writes: Mapping[str, tuple[bytes, int]],
        deletes: Collection[str],
        read: Mapping[str, Entry | None],
    ) -> None:
        with self._lock:
            for key, (raw, expires) in writes.items():
                self._entries[key] = (expires, raw)
                self._managed.add(key)
            for key in deletes:
                self._entries.pop(key, None)
                self._managed.discard(key)
