"""The ``cache`` argument: Flask-Caching's Cache inside and outside requests, raw backends."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from cachelib import NullCache
from flask import Flask
from flask_caching import Cache

import cachekit


def test_the_flask_cache_works_in_a_request_and_outside_one(
    flask_cache: tuple[Flask, Cache],
) -> None:
    app, cache = flask_cache
    with app.test_request_context("/"):
        assert cachekit.incr(cache, "n") == 1
    with app.app_context():
        assert cachekit.incr(cache, "n") == 2
    assert cachekit.incr(cache, "n") == 3  # no context: the app it was initialised with
    assert cachekit.incr(cache.cache, "n") == 4  # the backend itself
    with app.app_context():
        assert cache.get("n") == 4


def test_an_uninitialised_cache_says_so() -> None:
    with pytest.raises(cachekit.ConfigurationError, match="init_app"):
        cachekit.incr(Cache(), "n")


def test_null_cache_is_refused_at_first_use(tmp_path: Path) -> None:
    app = Flask(__name__)
    cache = Cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Flask-Caching warns that NullCache caches nothing
        cache.init_app(app, config={"CACHE_TYPE": "NullCache"})
    with app.app_context():
        with pytest.raises(cachekit.UnsupportedBackend, match="NullCache"):
            cachekit.incr(cache, "n")
    with pytest.raises(cachekit.UnsupportedBackend):
        cachekit.get_or_compute(NullCache(), "n", lambda: 1)


def test_flask_caching_defaults_are_refused_with_the_fix(tmp_path: Path) -> None:
    app = Flask(__name__)
    cache = Cache(app, config={"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(tmp_path)})
    with pytest.raises(cachekit.ConfigurationError, match="CACHE_THRESHOLD=0"):
        cachekit.incr(cache, "n")


def test_not_a_cache_is_refused() -> None:
    with pytest.raises(cachekit.InvalidArgument, match="dict"):
        cachekit.incr({}, "n")  # type: ignore[arg-type]


def test_errors_share_one_base_and_pickle() -> None:
    import pickle

    error = cachekit.LockTimeout("could not lock", name="x", timeout=1.0)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, cachekit.LockTimeout)
    assert isinstance(copy, cachekit.CachekitError) and isinstance(error, TimeoutError)
    assert (copy.name, copy.timeout, str(copy)) == ("x", 1.0, "could not lock")
