"""The demo app under real gunicorn workers, hammered by hundreds of HTTP clients.

Every assertion is exact: each counter value handed out once, each appended
item present once, each client's own counter 1..k, money conserved.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any
from urllib.request import OpenerDirector

import pytest

from .server import client, concurrently, get, get_ok, gunicorn, post_ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CLIENTS = 200
HITS = 800
NOTES = 200
PER_CLIENT = 10
SESSIONS = 20
TRANSFERS = 200


def hammer(*bases: str) -> None:
    """Load every stateful route at once and check the exact outcome of each.

    With several ``bases`` (servers sharing one backend) the requests are dealt
    out among them in turn.
    """
    sessions = [client() for _ in range(SESSIONS)]
    for i, session in enumerate(sessions):  # a first request gives each session its client id
        assert post_ok(bases[i % len(bases)] + "/reset", session) == {"count": 0}
    requests: list[tuple[str, str, OpenerDirector | None]] = []
    requests += [("hit", "/hits", None)] * HITS
    requests += [("note", f"/notes?item=n{i}", None) for i in range(NOTES)]
    requests += [("inc", "/inc", session) for session in sessions for _ in range(PER_CLIENT)]
    requests += [("transfer", "/transfer?amount=1", None)] * TRANSFERS

    def send(i: int) -> tuple[str, int, Any]:
        kind, path, session = requests[i]
        return kind, id(session), post_ok(bases[i % len(bases)] + path, session)

    results = concurrently(CLIENTS, [partial(send, i) for i in range(len(requests))])
    hits = [body["hits"] for kind, _, body in results if kind == "hit"]
    assert sorted(hits) == list(range(1, HITS + 1))

    base = bases[0]
    notes = get_ok(base + "/notes")
    assert Counter(notes["items"]) == Counter(f"n{i}" for i in range(NOTES))

    per_session: dict[int, list[int]] = {}
    for kind, session_id, body in results:
        if kind == "inc":
            per_session.setdefault(session_id, []).append(body["count"])
    assert len(per_session) == SESSIONS
    for counts in per_session.values():
        assert sorted(counts) == list(range(1, PER_CLIENT + 1))

    balances = get_ok(base + "/accounts")
    assert balances == {"account:a": 1000 - TRANSFERS, "account:b": 1000 + TRANSFERS}


#: The embedded backends, as the demo selects them (FLASK_CACHE_TYPE; FileSystemCache by default).
EMBEDDED = {"FileSystemCache": {}, "LMDBCache": {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"}}


def backend_env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend == "RedisCache":
        return redis_env(request.getfixturevalue("redis_url"))
    return dict(EMBEDDED[backend])


@pytest.mark.parametrize("backend", sorted(EMBEDDED))
@pytest.mark.parametrize(
    "args",
    [
        ("-w", "4"),
        ("-w", "4", "-k", "gthread", "--threads", "8"),
        ("-w", "4", "--preload"),
    ],
    ids=["sync", "gthread", "preload"],
)
def test_embedded_backends_are_exact_under_gunicorn(
    tmp_path: Path, args: tuple[str, ...], backend: str
) -> None:
    with gunicorn(tmp_path, *args, env=EMBEDDED[backend]) as base:
        hammer(base)
        assert (tmp_path / "cache" / "data.mdb").exists() == (backend == "LMDBCache")
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
        runs = concurrently(50, [lambda: post_ok(base + "/report")["runs"]] * 300)
    assert sorted(runs) == list(range(1, 301))


@pytest.mark.parametrize("args", [("-w", "4"), ("-w", "4", "--preload")], ids=["sync", "preload"])
def test_simple_cache_under_several_workers_is_refused(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Several workers on SimpleCache: gunicorn does not boot, and its log says why and the fix.

    (It used to boot and answer 500 to every request.) With ``--preload`` the
    master refuses, once; without, each worker says it once.
    """
    with pytest.raises(RuntimeError) as refused:
        with gunicorn(tmp_path, *args, env={"FLASK_CACHE_TYPE": "SimpleCache"}):
            pass
    log = str(refused.value)
    assert "gunicorn exited" in log
    assert "SimpleCache keeps a separate copy in each worker process" in log
    assert "FileSystemCache" in log and "worker processes" in log


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


def test_simple_cache_in_one_gevent_worker_is_exact(tmp_path: Path) -> None:
    """One process, many greenlets: SimpleCache's thread locks are greenlet locks here."""
    env = {"FLASK_CACHE_TYPE": "SimpleCache", "DEMO_EXPENSIVE_SECONDS": "1"}
    args = ("-w", "1", "-k", "gevent", "--worker-connections", "300", "--timeout", "20")
    with gunicorn(tmp_path, *args, env=env) as base:
        hammer(base)
        computed = concurrently(60, [lambda: get_ok(base + "/expensive")] * 60)
    assert computed == [{"answer": 42, "computation": 1}] * 60
    assert worker_timeouts(tmp_path) == []


def redis_env(redis_url: str) -> dict[str, str]:
    return {
        "FLASK_CACHE_TYPE": "RedisCache",
        "FLASK_CACHE_REDIS_URL": redis_url,
        "FLASK_CACHE_KEY_PREFIX": f"gunicorn-{uuid.uuid4().hex[:8]}:",
    }


def test_two_hosts_sharing_only_redis_are_exact(tmp_path: Path, redis_url: str) -> None:
    """Two servers with their own cache directories, as two machines would have."""
    env = redis_env(redis_url)
    (tmp_path / "host-a").mkdir()
    (tmp_path / "host-b").mkdir()
    with gunicorn(tmp_path / "host-a", "-w", "4", env=env) as a:
        with gunicorn(
            tmp_path / "host-b", "-w", "2", "-k", "gthread", "--threads", "4", env=env
        ) as b:
            hammer(a, b)
            assert get_ok(a + "/boots") == get_ok(b + "/boots") == {"boots": 6}
            results = concurrently(60, [lambda u=u: get_ok(u + "/expensive") for u in (a, b)] * 30)
    assert {r["computation"] for r in results} == {1}


def test_redis_under_preload_is_exact(tmp_path: Path, redis_url: str) -> None:
    """The master's client (it used cachekit before forking) is never shared with workers."""
    with gunicorn(tmp_path, "-w", "4", "--preload", env=redis_env(redis_url)) as base:
        hammer(base)
        assert get_ok(base + "/boots") == {"boots": 1}


@pytest.mark.parametrize("backend", sorted(EMBEDDED))
def test_workers_recycled_under_load_lose_nothing(tmp_path: Path, backend: str) -> None:
    """--max-requests replaces each worker every ~100 requests, in the middle of the load."""
    with gunicorn(
        tmp_path,
        "-w",
        "4",
        "--max-requests",
        "100",
        "--max-requests-jitter",
        "40",
        env=EMBEDDED[backend],
    ) as base:
        hammer(base)


def test_a_server_restart_continues_where_it_stopped(tmp_path: Path) -> None:
    with gunicorn(tmp_path, "-w", "4") as base:
        first = concurrently(50, [lambda: post_ok(base + "/hits")["hits"]] * 200)
    with gunicorn(tmp_path, "-w", "2", "-k", "gthread", "--threads", "4") as base:
        second = concurrently(50, [lambda: post_ok(base + "/hits")["hits"]] * 200)
    assert sorted(first + second) == list(range(1, 401))


@pytest.mark.parametrize("backend", sorted(EMBEDDED))
def test_a_worker_killed_for_timeout_inside_an_update_blocks_no_one(
    tmp_path: Path, backend: str
) -> None:
    """gunicorn kills a worker stuck in an update; the value stays the old one."""
    with gunicorn(
        tmp_path, "-w", "2", "--timeout", "2", app="tests.slowapp:app", env=EMBEDDED[backend]
    ) as base:
        assert get_ok(base + "/n") == {"n": 1}
        stuck = threading.Thread(target=get_quietly, args=(base + "/stuck-update",))
        stuck.start()
        stuck.join(30)  # answered (with an error) once gunicorn killed the stuck worker
        # A waiter would be killed too if it waited past --timeout: ask only now.
        began = time.monotonic()
        assert get_ok(base + "/n") == {"n": 2}  # not 1001: the stuck update never landed
        assert time.monotonic() - began < 1


def get_quietly(url: str) -> None:
    try:
        get(url)
    except (OSError, ValueError):  # the worker serving it is killed
        pass


def worker_timeouts(tmp_path: Path) -> list[str]:
    return [
        line
        for log in tmp_path.glob("gunicorn-*.log")
        for line in log.read_text().splitlines()
        if "WORKER TIMEOUT" in line
    ]


@pytest.mark.parametrize("preload", [False, True], ids=["gevent", "gevent-preload"])
@pytest.mark.parametrize("backend", ["FileSystemCache", "LMDBCache", "RedisCache"])
def test_gevent_workers_are_exact(
    tmp_path: Path, backend: str, preload: bool, request: pytest.FixtureRequest
) -> None:
    """Greenlets: nothing cachekit holds across I/O is a lock gevent cannot switch on.

    With --preload the master uses cachekit (the demo counts its boot) before
    gevent patches the workers.
    """
    env = backend_env(backend, request)
    env["DEMO_EXPENSIVE_SECONDS"] = "1"
    args = ["-w", "2", "-k", "gevent", "--worker-connections", "300", "--timeout", "20"]
    with gunicorn(tmp_path, *args, *(["--preload"] if preload else []), env=env) as base:
        hammer(base)
        computed = concurrently(60, [lambda: get_ok(base + "/expensive")] * 60)
        runs = concurrently(30, [lambda: post_ok(base + "/report")["runs"]] * 100)
        assert get_ok(base + "/boots") == {"boots": 1 if preload else 2}
    assert computed == [{"answer": 42, "computation": 1}] * 60
    assert sorted(runs) == list(range(1, 101))
    assert worker_timeouts(tmp_path) == []


@pytest.mark.parametrize("backend", ["LMDBCache", "RedisCache"])
def test_gevent_preload_workers_flush_statistics_while_readers_wait(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Readers of the statistics wait for a flush in flight; under gevent that wait must switch.

    The master made the strategy (the demo counts its boot) before gevent
    patched the workers: a flush lock made then is a real lock, and a reader
    greenlet blocking on it while a flushing greenlet waits on Redis froze the
    worker. A short interval makes flushes and reads overlap all the time.
    """
    env = backend_env(backend, request)
    env["FLASK_CACHEKIT_STATS_INTERVAL"] = "0.005"
    args = ["-w", "2", "-k", "gevent", "--preload", "--worker-connections", "300"]
    with gunicorn(tmp_path, *args, "--timeout", "20", env=env) as base:
        jobs: list[Any] = []
        for _ in range(300):
            jobs += [lambda: post_ok(base + "/hits")["hits"]] * 3
            jobs.append(lambda: get_ok(base + "/stats")["all_workers"]["operations"]["incr"])
        results = concurrently(60, jobs)
        hits = [r for i, r in enumerate(results) if i % 4 != 3]
        # A read flushes its own worker; the other flushes on its timer within
        # about 1.5 intervals, so its last hits may land just after this read.
        deadline = time.monotonic() + 10
        while (final := get_ok(base + "/stats")["all_workers"]["operations"]["incr"]) < 900:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert sorted(hits) == list(range(1, 901))
    assert final >= 900  # every worker's hits, flushed (and the boot's, if the master exited)
    assert worker_timeouts(tmp_path) == []


@pytest.mark.parametrize("kind", ["RedisSentinelCache", "RedisClusterCache"])
def test_gevent_preload_workers_on_sentinel_and_cluster(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """The demo's keys share one hash slot through the prefix's {hash tag} (for Cluster)."""
    env = {
        "FLASK_CACHE_TYPE": kind,
        "FLASK_CACHE_KEY_PREFIX": f"{{g{uuid.uuid4().hex[:6]}}}:",
        "DEMO_EXPENSIVE_SECONDS": "1",
    }
    if kind == "RedisSentinelCache":
        sentinel = request.getfixturevalue("redis_sentinel")
        env["FLASK_CACHE_REDIS_SENTINELS"] = f'[["127.0.0.1", {sentinel.port}]]'
        env["FLASK_CACHE_REDIS_SENTINEL_MASTER"] = "mymaster"
    else:
        env["FLASK_CACHE_REDIS_CLUSTER"] = (
            f"127.0.0.1:{request.getfixturevalue('redis_cluster').port}"
        )
    args = (
        "-w",
        "2",
        "-k",
        "gevent",
        "--preload",
        "--worker-connections",
        "300",
        "--timeout",
        "20",
    )
    with gunicorn(tmp_path, *args, env=env) as base:
        hammer(base)
        computed = concurrently(60, [lambda: get_ok(base + "/expensive")] * 60)
    assert computed == [{"answer": 42, "computation": 1}] * 60
    assert worker_timeouts(tmp_path) == []


@pytest.mark.parametrize("worker", ["sync", "gevent"])
@pytest.mark.parametrize("backend", ["FileSystemCache", "LMDBCache", "RedisCache"])
def test_a_lock_holder_killed_by_sigkill_frees_the_lock(
    tmp_path: Path, backend: str, worker: str, request: pytest.FixtureRequest
) -> None:
    """kill -9 of the worker inside lock(): the next holder enters at once, with a larger token."""
    import os
    import signal

    env = backend_env(backend, request)
    env["FLASK_CACHEKIT_LEASE"] = "30"  # far longer than the test waits: only proof frees it
    with gunicorn(tmp_path, "-w", "2", "-k", worker, app="tests.slowapp:app", env=env) as base:
        stuck = threading.Thread(target=get_quietly, args=(base + "/stuck-lock",))
        stuck.start()
        deadline = time.monotonic() + 20
        while not (holder := get_ok(base + "/holder")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(holder["pid"], signal.SIGKILL)
        began = time.monotonic()
        got = get_ok(base + "/locked")
        assert time.monotonic() - began < 1.5
        assert got["token"] > holder["token"]
        stuck.join(30)
