"""LMDBCache: the embedded backend, a Flask-Caching backend on LMDB with native helpers.

``store.py`` (the engine: environments, stored form, sweeps, errors),
``backend.py`` (the Flask-Caching backend), ``strategy.py`` (the helpers).
"""

from .backend import LMDBCache

__all__ = ["LMDBCache"]
