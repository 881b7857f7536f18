"""The demo app under real gunicorn workers, hammered by hundreds of HTTP clients.

Every assertion is exact: each counter value handed out once, each appended
item present once, each client's own counter 1..k, money conserved.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from .server import client, concurrently, get, get_ok, gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CLIENTS = 200
HITS = 2000
NOTES = 400
PER_CLIENT = 10
SESSIONS = 20
TRANSFERS = 300


def hammer(base: str) -> None:
    """Load every stateful route at once and check the exact outcome of each."""
    sessions = [client() for _ in range(SESSIONS)]
    for session in sessions:  # one request first, so that the session has its client id
        assert get_ok(base + "/reset", session) == {"count": 0}
    jobs = (
        [lambda: ("hit", get_ok(base + "/hits")["hits"]) for _ in range(HITS)]
        + [lambda i=i: ("note", get_ok(f"{base}/notes/add?item=n{i}")) for i in range(NOTES)]
        + [
            lambda s=s: ("inc", (id(s), get_ok(base + "/inc", s)["count"]))
            for s in sessions
            for _ in range(PER_CLIENT)
        ]
        + [lambda: ("transfer", get_ok(base + "/transfer?amount=1")) for _ in range(TRANSFERS)]
    )
    results = concurrently(CLIENTS, jobs)
    hits = [value for kind, value in results if kind == "hit"]
    assert sorted(hits) == list(range(1, HITS + 1))

    notes = get_ok(base + "/notes")
    assert Counter(notes["items"]) == Counter(f"n{i}" for i in range(NOTES))

    per_session: dict[int, list[int]] = {}
    for kind, value in results:
        if kind == "inc":
            per_session.setdefault(value[0], []).append(value[1])
    assert len(per_session) == SESSIONS
    for counts in per_session.values():
        assert sorted(counts) == list(range(1, PER_CLIENT + 1))

    balances = get_ok(base + "/accounts")
    assert balances == {"account:a": 1000 - TRANSFERS, "account:b": 1000 + TRANSFERS}


@pytest.mark.parametrize(
    "args",
    [
        ("-w", "4"),
        ("-w", "4", "-k", "gthread", "--threads", "8"),
        ("-w", "4", "--preload"),
    ],
    ids=["sync", "gthread", "preload"],
)
def test_filesystem_cache_is_exact_under_gunicorn(tmp_path: Path, args: tuple[str, ...]) -> None:
    with gunicorn(tmp_path, *args) as base:
        hammer(base)
        boots = get_ok(base + "/boots")["boots"]
        # --preload: only the master imports the app (and used cachekit before forking).
        assert boots == (1 if "--preload" in args else 4)


def test_expensive_value_is_computed_once_for_concurrent_clients(tmp_path: Path) -> None:
    with gunicorn(
        tmp_path, "-w", "4", "-k", "gthread", "--threads", "8", env={"DEMO_EXPENSIVE_SECONDS": "1"}
    ) as base:
        results = concurrently(100, [lambda: get_ok(base + "/expensive")] * 100)
    assert results == [{"answer": 42, "computation": 1}] * 100


def test_lock_around_update_under_gunicorn(tmp_path: Path) -> None:
    with gunicorn(tmp_path, "-w", "4", "-k", "gthread", "--threads", "4") as base:
        runs = concurrently(50, [lambda: get_ok(base + "/report")["runs"]] * 300)
    assert sorted(runs) == list(range(1, 301))


@pytest.mark.parametrize("args", [("-w", "4"), ("-w", "4", "--preload")], ids=["sync", "preload"])
def test_simple_cache_under_several_workers_is_refused(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    with gunicorn(tmp_path, *args, env={"FLASK_CACHE_TYPE": "SimpleCache"}) as base:
        status, body = get(base + "/hits")
    assert status == 503
    assert body["error"] == "PerProcessBackend"
    assert "FileSystemCache" in body["message"]


def test_simple_cache_in_one_threaded_worker_is_exact(tmp_path: Path) -> None:
    with gunicorn(
        tmp_path,
        "-w",
        "1",
        "-k",
        "gthread",
        "--threads",
        "8",
        env={"FLASK_CACHE_TYPE": "SimpleCache"},
    ) as base:
        hammer(base)
