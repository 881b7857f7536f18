"""What is specific to SimpleCache: one process only, state safe from pruning."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import pytest
from cachelib import SimpleCache
from flask import Flask

import cachekit

FORK = mp.get_context("fork")


def test_pruning_never_evicts_cachekit_state() -> None:
    cache = SimpleCache(threshold=5)
    for i in range(3):
        cachekit.incr(cache, f"state-{i}", 10 + i)
    for i in range(50):
        cache.set(f"page-{i}", i, timeout=0)
    assert [cache.get(f"state-{i}") for i in range(3)] == [10, 11, 12]
    assert len(cache._cache) <= 5 + 3 + 1  # the threshold still bounds everything else
    assert cachekit.incr(cache, "state-0") == 11


def test_pruning_forgets_expired_cachekit_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-client keys with a timeout (rate limits) leave nothing behind once pruned."""
    import time

    from cachekit.resolve import strategy_for

    cache = SimpleCache(threshold=5)
    for i in range(100):
        cachekit.incr(cache, f"client-{i}", 1, timeout=60)
    cachekit.incr(cache, "state", 1)
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)  # cachelib's clock and cachekit's
    for i in range(10):
        cache.set(f"page-{i}", i, timeout=0)  # past the threshold: a prune
    assert strategy_for(cache)._managed == {"state"}  # type: ignore[attr-defined]
    assert cache.get("state") == 1


def incr_in_child(cache: Any, out: Any) -> None:
    try:
        cachekit.incr(cache, "n")
        out.put("no error")
    except cachekit.PerProcessBackend as error:
        out.put(str(error))


def test_a_cache_inherited_across_fork_is_refused() -> None:
    cache = SimpleCache()
    cachekit.incr(cache, "n")
    out = FORK.Queue()
    child = FORK.Process(target=incr_in_child, args=(cache, out))
    child.start()
    message = out.get(timeout=20)
    child.join(10)
    assert "a fork of it" in message and "FileSystemCache" in message
    assert cachekit.incr(cache, "n") == 2  # the parent is unaffected


def test_a_multiprocess_wsgi_server_is_refused() -> None:
    app = Flask(__name__)
    cache = SimpleCache()
    with app.test_request_context(environ_overrides={"wsgi.multiprocess": True}):
        with pytest.raises(cachekit.PerProcessBackend, match="wsgi.multiprocess"):
            cachekit.incr(cache, "n")
    with app.test_request_context(environ_overrides={"wsgi.multiprocess": False}):
        assert cachekit.incr(cache, "n") == 1
