"""Every ``str`` key works exactly or raises InvalidArgument, on every backend, for every helper.

Keys are drawn by hypothesis from all of Unicode, lone surrogates included
(what ``surrogateescape`` makes of bytes that are not UTF-8), plus the
characters that mean something to a backend: hash-tag braces for Redis
Cluster, separators, NUL, very long keys.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachekit

pytestmark = pytest.mark.timeout(300)

KEYS = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(st.sampled_from("{}:/\\.\x00 \udcff\ud800é€"), max_size=12),
    st.text(st.characters(codec="utf-8"), min_size=200, max_size=300),
)


def encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(key)


def each_helper(backend: Any, key: str) -> list[Any]:
    """Run every helper on ``key``; return what each one returned."""
    got: list[Any] = [cachekit.incr(backend, key, 2)]
    got.append(cachekit.update(backend, key, lambda n: n * 10))
    with cachekit.transaction(backend, key) as txn:
        txn[key] += 1
    with cachekit.lock(backend, key) as handle:
        got.append(handle.token > 0)
    got.append(cachekit.get_or_compute(backend, key, lambda: -1))
    return got


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=KEYS, second=KEYS)
def test_every_key_works_exactly_or_is_refused(backend: Any, first: str, second: str) -> None:
    for key in dict.fromkeys((first, second)):
        if not encodable(key):
            with pytest.raises(cachekit.InvalidArgument):
                each_helper(backend, key)
            continue
        backend.delete(key)
        assert each_helper(backend, key) == [2, 20, True, 21]
        assert backend.get(key) == 21  # the plain cache reads exactly what cachekit wrote
    if encodable(first) and encodable(second) and first != second:
        assert backend.get(first) == backend.get(second) == 21  # no two keys collide
        cachekit.incr(backend, first)
        assert (backend.get(first), backend.get(second)) == (22, 21)


def test_the_cli_refuses_undecodable_bytes_clearly(tmp_path: Path) -> None:
    """``flask cachekit incr $'caf\\xe9'``: the shell hands over bytes that are not UTF-8."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "cachekit", "incr", b"caf\xe9"],
        cwd=root,
        env={"FLASK_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "InvalidArgument" in result.stderr and "UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
