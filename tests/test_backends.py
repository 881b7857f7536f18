"""The backend registry: one place says which strategy answers for which backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis
from cachelib import FileSystemCache, NullCache, RedisCache, SimpleCache
from flask_caching.backends import RedisSentinelCache

import cachekit
from cachekit.backends import register_backend, strategy_class, unavailable
from cachekit.doctor import diagnose_backend
from cachekit.filesystem import FileSystemStrategy
from cachekit.redis.strategy import RedisStrategy
from cachekit.resolve import strategy_for
from cachekit.simple import SimpleStrategy

from .custombackend import TinyCache, TinyStrategy


class AppFileSystemCache(FileSystemCache):
    """An app's own subclass: it finds its base's strategy."""


def test_subclasses_find_their_base_strategy(tmp_path: Path) -> None:
    assert strategy_class(AppFileSystemCache(str(tmp_path), threshold=0)) is FileSystemStrategy
    sentinel = RedisSentinelCache.__new__(RedisSentinelCache)  # (no server: the class is enough)
    assert strategy_class(sentinel) is RedisStrategy


def test_a_backend_without_strategy_is_refused_with_the_advice() -> None:
    with pytest.raises(cachekit.UnsupportedBackend, match="NullCache stores nothing"):
        strategy_for(NullCache())
    (finding, *_) = diagnose_backend(NullCache())
    assert finding.level == "problem"
    assert "cachekit.LMDBCache or FileSystemCache" in finding.fix


def test_a_third_party_registers_a_backend_by_class() -> None:
    register_backend(TinyCache, TinyStrategy)
    cache = TinyCache()
    assert isinstance(strategy_for(cache), TinyStrategy)
    assert cachekit.incr(cache, "n", 2) == 2
    assert [f.what for f in diagnose_backend(cache)] == ["TinyCache is a test backend"]


def test_a_registration_by_name_is_imported_at_first_use(tmp_path: Path) -> None:
    module = tmp_path / "lazy_strategy_for_tests.py"
    module.write_text(
        "from cachekit.simple import SimpleStrategy\n"
        "class LazyStrategy(SimpleStrategy):\n"
        "    name = 'lazy'\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:

        class LazyCache(SimpleCache):
            pass

        register_backend(
            f"{LazyCache.__module__}:{LazyCache.__qualname__}",
            "lazy_strategy_for_tests:LazyStrategy",
        )
        assert "lazy_strategy_for_tests" not in sys.modules
        assert strategy_class(LazyCache()).name == "lazy"
        assert strategy_class(SimpleCache()) is SimpleStrategy  # the base keeps its own
    finally:
        sys.path.remove(str(tmp_path))


def test_each_strategy_names_its_own_unavailable_errors(tmp_path: Path) -> None:
    client = redis.Redis(port=1)  # never connected
    found = unavailable([RedisCache(host=client), FileSystemCache(str(tmp_path), threshold=0)])
    assert redis.exceptions.ConnectionError in found
    assert redis.exceptions.TimeoutError in found
    assert unavailable([FileSystemCache(str(tmp_path), threshold=0), NullCache()]) == ()
