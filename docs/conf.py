"""Sphinx configuration: the cachekit documentation (``make docs``).

Markdown pages (MyST) for the guides, reStructuredText for the API reference
(autodoc, from the docstrings), the Pallets projects' "flask" theme. The
Python samples in the guides are ``testcode`` blocks: ``make docs`` runs them
with the doctest builder, on a throwaway FileSystemCache (``doctest_global_setup``).
"""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # cachekit from the checkout, whether installed or not

project = "cachekit"
copyright = "the cachekit authors"
try:
    release = importlib.metadata.version("flask-cachekit")
except importlib.metadata.PackageNotFoundError:  # (a checkout that is not installed)
    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "pallets_sphinx_themes",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# -- MyST: links to headings across pages, as GitHub renders them ----------------------
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# -- autodoc -------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}

# -- the samples (sphinx.ext.doctest) --------------------------------------------------
# Every group of every page starts with a Flask app on a FileSystemCache of its own in a
# fresh directory, inside an app context; the samples use `app`, `cache` and `kit` as the
# guides' `common.py` and app factory make them. A sample shown as a file of its own
# (`common.py`) is made importable by a hidden `_as_module("common", cache=cache, ...)`.
doctest_global_setup = """
import os as _os
import shutil as _shutil
import sys as _sys
import tempfile as _tempfile
import types as _types

__name__ = "cachekit_docs"  # (the samples' module: Flask(__name__), memoized names)
_replaced = {}


def _as_module(name, **names):
    _replaced.setdefault(name, _sys.modules.get(name))
    module = _sys.modules[name] = _types.ModuleType(name)
    module.__dict__.update(names)
    return module


from flask import Flask
from flask_caching import Cache

import cachekit
from cachekit import CacheKit

_directory = _tempfile.mkdtemp(prefix="cachekit-docs-")
app = Flask(__name__, instance_path=_directory)
app.config.from_mapping(
    CACHE_TYPE="FileSystemCache",
    CACHE_DIR=_os.path.join(_directory, "cache"),
    CACHE_THRESHOLD=0,
    CACHE_DEFAULT_TIMEOUT=0,
    CACHEKIT_JSON_ERRORS=True,
    SECRET_KEY="the docs' samples",
)
_os.makedirs(app.config["CACHE_DIR"], mode=0o700)
cache = Cache()
kit = CacheKit(cache)
cache.init_app(app)
kit.init_app(app)
_context = app.app_context()
_context.push()
"""
doctest_global_cleanup = """
_context.pop()
for _name, _module in _replaced.items():
    if _module is None:
        _sys.modules.pop(_name, None)
    else:
        _sys.modules[_name] = _module
_shutil.rmtree(_directory, ignore_errors=True)
"""
doctest_test_doctest_blocks = ""  # only the explicit testcode / doctest blocks

# -- HTML ----------------------------------------------------------------------------
html_theme = "flask"
html_title = f"cachekit {version}"
html_static_path: list[str] = []
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
html_show_sourcelink = False
