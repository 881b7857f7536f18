"""Fixtures shared by the suite: one table of backends, fresh per test.

The contract suite (``test_contract.py``) runs against every entry of
:data:`BACKENDS`; a backend that needs a server adds its entry here with the
fixture that starts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cachelib import FileSystemCache, SimpleCache
from flask import Flask
from flask_caching import Cache

BackendFactory = Callable[[Path], Any]


def filesystem_backend(tmp_path: Path) -> Any:
    return FileSystemCache(str(tmp_path / "cache"), threshold=0)


def simple_backend(tmp_path: Path) -> Any:
    return SimpleCache()


BACKENDS: dict[str, BackendFactory] = {
    "FileSystemCache": filesystem_backend,
    "SimpleCache": simple_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A fresh backend instance of each kind in :data:`BACKENDS`."""
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def fs_backend(tmp_path: Path) -> Any:
    return filesystem_backend(tmp_path)


@pytest.fixture
def flask_cache(tmp_path: Path) -> Iterator[tuple[Flask, Cache]]:
    """A Flask app with a Flask-Caching FileSystemCache, set up the cachekit way."""
    app = Flask(__name__)
    cache = Cache()
    cache.init_app(
        app,
        config={
            "CACHE_TYPE": "FileSystemCache",
            "CACHE_DIR": str(tmp_path / "flask-cache"),
            "CACHE_THRESHOLD": 0,
        },
    )
    yield app, cache
