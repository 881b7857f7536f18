"""Stampede-proof caching: memoize, cached, stale while revalidate, early refresh, tags.

Every backend of ``conftest.BACKENDS``, real threads and real processes;
computations are counted exactly. A computation that must be in flight at a
given moment is held there by an :class:`threading.Event`, never by a sleep,
so that "served at once" is shown without timing anything.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from cachelib import RedisCache
from flask import Flask, jsonify, make_response, request
from flask.typing import ResponseReturnValue

import cachekit
from cachekit import computed
from cachekit.resolve import strategy_for

from .conftest import skip_if_per_process, use_settings
from .redisserver import RedisServer, redis_binary
from .server import free_port
from .test_contract import run_threads

pytestmark = pytest.mark.timeout(60)

#: Seconds a test waits for a background refresh it started before it fails.
SETTLE = 10.0


def settle(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` (a background thread's effect) holds; fail after SETTLE s."""
    deadline = time.monotonic() + SETTLE
    while not condition():
        assert time.monotonic() < deadline, "the background refresh did not happen"
        time.sleep(0.005)


class Origin:
    """A counted computation: ``calls`` is exact; ``gate`` (if set) holds every call in flight."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.gate = gate
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> tuple[int, tuple[Any, ...]]:
        with self._lock:
            self.calls += 1
            n = self.calls
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(SETTLE)
        return n, args


def age(backend: Any, key: str, seconds: float, delta: float | None = None) -> None:
    """Make the record at ``key`` look ``seconds`` older (its freshness ends that much sooner).

    Rewrites the record in place through the strategy, as a clock ``seconds``
    ahead would see it; the backend's own expiry is left as it was.
    """
    strategy = strategy_for(backend)
    entry = strategy._load(key)
    assert entry is not None
    record = computed.Record.of(entry)
    assert record is not None
    record.fresh_until -= seconds
    if delta is not None:
        record.delta = delta  # as if the computation had taken that long
    with strategy._modifying((key,)):
        strategy._commit({key: (strategy._encode(key, record.stored()), entry.expires)}, (), {})


@contextmanager
def computing_elsewhere(backend: Any, **options: Any) -> Iterator[Any]:
    """A memoized ``slow()`` whose computation another thread holds in flight for the block.

    Inside, calls of this thread compute at once (the gate is for the first
    computation only); leaving opens the gate and joins the other thread.
    """
    gate = threading.Event()
    origin = Origin(gate)

    @cachekit.memoize(backend, timeout=60, **options)
    def slow() -> Any:
        return origin()

    computing = threading.Thread(target=slow)
    computing.start()
    settle(origin.started.is_set)
    origin.gate = None
    try:
        yield slow
    finally:
        gate.set()
        computing.join(SETTLE)


def figures_of(backend: Any, function: Any) -> dict[str, int]:
    """This process's statistics of a decorated function."""
    name = f"{function.__module__}.{function.__qualname__}"
    return cachekit.statistics(backend, merged=False)["memo"][name]  # type: ignore[no-any-return]


def key_of(function: Any, *args: Any) -> str:
    return function.cache_key(*args)  # type: ignore[no-any-return]


# -- single flight ---------------------------------------------------------------------


def test_concurrent_cold_calls_compute_once(backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60)
    def slow(x: int) -> Any:
        time.sleep(0.2)
        return origin(x)

    strategy_for(backend)  # made (and the server checked) before the threads start
    results = run_threads(32, lambda i: slow(7))
    assert origin.calls == 1
    assert results == [(1, (7,))] * 32
    figures = figures_of(backend, slow)
    assert figures["computations"] == 1
    # A thread the scheduler starts after the computation ended finds a hit.
    assert figures["misses"] + figures["hits"] == 32
    assert figures["joined"] == figures["misses"] - 1


def test_arguments_are_keyed_as_bound_with_defaults(backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, beta=0)
    def f(a: int, b: int = 2, *rest: int, **options: Any) -> Any:
        return origin(a, b, rest, options)

    assert f(1) == f(1, 2) == f(a=1) == f(b=2, a=1)
    assert origin.calls == 1
    f(1, 3)
    f(1, 2, 9)
    f(1, flag=True)
    assert origin.calls == 4
    assert f.cache_key(1) == f.cache_key(a=1) != f.cache_key(2)


def test_none_is_cached_and_told_from_a_miss(backend: Any) -> None:
    calls = []

    @cachekit.memoize(backend, timeout=60)
    def nothing() -> None:
        calls.append(1)

    assert nothing() is None and nothing() is None
    assert len(calls) == 1


def test_an_exception_caches_nothing_and_the_next_call_computes(backend: Any) -> None:
    outcomes = iter([ValueError("origin down"), 5])

    @cachekit.memoize(backend, timeout=60)
    def flaky() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, int)
        return outcome

    with pytest.raises(ValueError, match="origin down"):
        flaky()
    assert flaky() == 5 and flaky() == 5


def test_processes_cold_calls_compute_once(backend: Any, tmp_path: Path) -> None:
    skip_if_per_process(backend)
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    results = ctx.Queue()
    children = [
        ctx.Process(target=_memoized_in_a_child, args=(backend, go, results)) for _ in range(8)
    ]
    for child in children:
        child.start()
    go.set()
    got = sorted(results.get(timeout=30) for _ in children)
    for child in children:
        child.join(10)
        assert child.exitcode == 0
    assert got == [1] * 8
    assert backend.get("child-computations") == 1


def _memoized_in_a_child(backend: Any, go: Any, results: Any) -> None:
    @cachekit.memoize(backend, timeout=60)
    def counted() -> int:
        time.sleep(0.3)
        return cachekit.incr(backend, "child-computations")

    go.wait(10)
    results.put(counted())


def test_a_computing_process_killed_by_sigkill_lets_the_next_caller_compute(
    backend: Any,
) -> None:
    skip_if_per_process(backend)
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_compute_forever, args=(backend, started))
    child.start()
    try:
        assert started.wait(10)
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(10)

    @cachekit.memoize(backend, timeout=60, key=lambda: "stuck")
    def mine() -> str:
        return "mine"

    assert mine() == "mine"  # the dead holder's record lock or lease is gone
    assert mine() == "mine"


def _compute_forever(backend: Any, started: Any) -> None:
    @cachekit.memoize(backend, timeout=60, key=lambda: "stuck")
    def forever() -> str:
        started.set()
        time.sleep(60)
        return "never"

    forever()


# -- stale while revalidate ------------------------------------------------------------


def test_stale_values_are_served_at_once_while_one_thread_refreshes(backend: Any) -> None:
    gate = threading.Event()
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, stale=60, beta=0)
    def slow() -> Any:
        return origin()

    assert slow() == (1, ())
    age(backend, key_of(slow), 61)
    origin.gate = gate
    origin.started.clear()  # (set by the first computation: wait for the refresh's)
    try:
        results = run_threads(16, lambda i: slow())  # the refresh is held at the gate
        assert results == [(1, ())] * 16
        settle(origin.started.is_set)
        assert origin.calls == 2  # one refresh for 16 stale callers
    finally:
        gate.set()
    settle(lambda: slow() == (2, ()))
    assert origin.calls == 2


def test_past_stale_a_call_waits_for_the_value(backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, stale=10, beta=0)
    def slow() -> Any:
        return origin()

    slow()
    age(backend, key_of(slow), 71)
    assert slow() == (2, ())


def test_a_failing_refresh_keeps_the_stale_value_and_is_counted(
    backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = iter([1, RuntimeError("origin down"), 3])

    @cachekit.memoize(backend, timeout=60, stale=60, beta=0)
    def flaky() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, int)
        return outcome

    assert flaky() == 1
    age(backend, key_of(flaky), 61)
    with caplog.at_level(logging.ERROR, logger="cachekit.computed"):
        assert flaky() == 1
        settle(lambda: figures_of(backend, flaky)["refresh_errors"] == 1)
    assert "origin down" in caplog.text
    assert flaky() == 1  # still stale: the next stale call refreshes again
    settle(lambda: flaky() == 3)


# -- early refresh (XFetch) ------------------------------------------------------------


def test_early_refresh_only_near_expiry_and_when_drawn(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, beta=1.0)
    def slow() -> Any:
        return origin()

    slow()
    age(backend, key_of(slow), 0, delta=5.0)
    monkeypatch.setattr(random, "random", lambda: 0.999999)  # -ln(1-u) = 13.8
    assert slow() == (1, ())  # 60 s left: beyond delta*beta = 5 s, never early
    age(backend, key_of(slow), 57)  # 3 s left: within delta*beta
    monkeypatch.setattr(random, "random", lambda: 0.0)  # -ln(1) = 0: this draw says no
    for _ in range(20):
        assert slow() == (1, ())
    time.sleep(0.2)
    assert origin.calls == 1
    monkeypatch.setattr(random, "random", lambda: 0.999999)
    assert slow() == (1, ())  # served at once, refreshed behind
    settle(lambda: origin.calls == 2)
    settle(lambda: slow() == (2, ()))
    assert figures_of(backend, slow)["early"] == 1


# -- tags, invalidate, forget ----------------------------------------------------------


def test_invalidate_is_immediate_on_every_backend(backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, stale=60, tags=("prices",))
    def price(item: str) -> Any:
        return origin(item)

    @cachekit.memoize(backend, timeout=60, tags=("stock",))
    def stock(item: str) -> Any:
        return origin(item)

    assert price("a") == (1, ("a",)) and stock("a") == (2, ("a",))
    cachekit.invalidate(backend, "prices")
    assert price("a") == (3, ("a",))  # not served stale either
    assert stock("a") == (2, ("a",))
    price.invalidate()
    assert price("a") == (4, ("a",))


def test_a_computation_in_flight_at_invalidate_is_not_served_after(backend: Any) -> None:
    gate = threading.Event()
    origin = Origin(gate)

    @cachekit.memoize(backend, timeout=60, tags=("t",))
    def slow() -> Any:
        return origin()

    first = threading.Thread(target=slow)
    first.start()
    settle(origin.started.is_set)  # computing under the old generation
    cachekit.invalidate(backend, "t")
    later: list[Any] = []
    second = threading.Thread(target=lambda: later.append(slow()))
    second.start()  # starts after invalidate returned: waits for the flight, then recomputes
    gate.set()
    first.join(SETTLE)
    second.join(SETTLE)
    assert later == [(2, ())]
    assert slow() == (2, ())


def test_per_call_tags(backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, tags=lambda user, page: [f"user:{user}"])
    def profile(user: int, page: int) -> Any:
        return origin(user, page)

    profile(1, 1), profile(1, 2), profile(2, 1)
    cachekit.invalidate(backend, "user:1")
    assert profile(2, 1)[0] == 3
    assert profile(1, 1)[0] == 4 and profile(1, 2)[0] == 5


def test_a_lost_generation_never_brings_an_invalidated_value_back(backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, tags=("t",))
    def f() -> Any:
        return origin()

    f()
    cachekit.invalidate(backend, "t")
    assert f() == (2, ())
    backend.delete(computed.tag_key("t"))  # pruned, evicted, deleted by hand
    assert f() == (3, ())
    assert f() == (3, ())


def test_forget_one_call_is_immediate_even_with_a_computation_in_flight(backend: Any) -> None:
    gate = threading.Event()
    origin = Origin(gate)

    @cachekit.memoize(backend, timeout=60)
    def slow(x: int) -> Any:
        return origin(x)

    first = threading.Thread(target=slow, args=(1,))
    first.start()
    settle(origin.started.is_set)
    forgotten = threading.Thread(target=slow.forget, args=(1,))
    forgotten.start()
    time.sleep(0.1)
    assert forgotten.is_alive()  # waits for the computation in flight
    gate.set()
    forgotten.join(SETTLE)
    first.join(SETTLE)
    assert slow(1) == (2, (1,))


def test_invalidate_raises_when_the_cache_cannot_be_written(tmp_path: Path) -> None:
    unreachable = RedisCache(port=free_port())
    with pytest.raises(cachekit.StorageError):
        cachekit.invalidate(unreachable, "t")


# -- should_cache, unless, keys --------------------------------------------------------


def test_should_cache_and_unless(backend: Any) -> None:
    origin = Origin()
    skip = [False]

    @cachekit.memoize(
        backend,
        timeout=60,
        should_cache=lambda value: value[1] != ("bad",),
        unless=lambda: skip[0],
    )
    def f(x: str) -> Any:
        return origin(x)

    f("bad"), f("bad")
    f("good"), f("good")
    assert origin.calls == 3
    skip[0] = True
    f("good")
    assert origin.calls == 4


class NoRepr:
    pass


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Named({self.name!r})"


def test_an_argument_keyed_by_its_address_is_refused(fs_backend: Any) -> None:
    @cachekit.memoize(fs_backend, timeout=60)
    def f(x: Any) -> int:
        return 1

    with pytest.raises(cachekit.InvalidArgument, match="memory address"):
        f(NoRepr())
    assert f(Named("a")) == 1

    @cachekit.memoize(fs_backend, timeout=60, key=lambda x: f"by-id:{id(x)}")
    def g(x: Any) -> int:
        return 2

    assert g(NoRepr()) == 2


def test_odd_arguments_and_tags_are_keyed_safely(fs_backend: Any) -> None:
    @cachekit.memoize(fs_backend, timeout=60)
    def echo(x: Any) -> Any:
        return x

    for value in ["\udcff", "x" * 5000, "{braces}", "nul\x00", b"\xff", None, (1, [2])]:
        assert echo(value) == value
        assert echo(value) == value
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.memoize(fs_backend, tags="one-string")(echo)
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.memoize(fs_backend, beta=-1)(echo)
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.memoize(fs_backend, stale=float("nan"))(echo)


def test_a_corrupt_record_is_recomputed(fs_backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(fs_backend, timeout=60)
    def f() -> Any:
        return origin()

    f()
    path = strategy_for(fs_backend)._path(key_of(f))  # type: ignore[attr-defined]
    with open(path, "r+b") as stored:
        stored.seek(4)
        stored.write(b"garbage" * 4)
    assert f() == (2, ())
    assert f() == (2, ())


# -- failing open ----------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, binary=redis_binary())
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_cache_that_goes_away_fails_open_and_is_skipped_for_a_while(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, redis_timeout=0.3, redis_connect_timeout=0.3)
    backend = RedisCache(host=redis.Redis.from_url(private_redis.url))
    origin = Origin()

    @cachekit.memoize(backend, timeout=60)
    def f() -> Any:
        return origin()

    @cachekit.memoize(backend, timeout=60, fail_open=False)
    def strict() -> int:
        return 1

    assert f() == (1, ()) and f() == (1, ())
    private_redis.pause()  # a hung server: every wait is bounded by CACHEKIT_REDIS_TIMEOUT
    try:
        began = time.monotonic()
        assert [f() for _ in range(20)] == [(n, ()) for n in range(2, 22)]
        assert time.monotonic() - began < 3.0  # one bounded wait, not 20 (that is 6 s)
        assert figures_of(backend, f)["errors"] == 20
        computed.outage.until.clear()
        with pytest.raises(cachekit.StorageError):
            strict()
    finally:
        private_redis.resume()
    computed.outage.until.clear()
    assert f() == (1, ())  # the stored value was never lost


def test_a_cache_unreachable_from_the_start_fails_open() -> None:
    unreachable = RedisCache(port=free_port())
    calls = []

    @cachekit.memoize(unreachable, timeout=60)
    def f() -> int:
        calls.append(1)
        return len(calls)

    @cachekit.memoize(unreachable, timeout=60, fail_open=False)
    def strict() -> int:
        return 1

    assert f() == 1 and f() == 2
    computed.outage.until.clear()
    with pytest.raises(cachekit.StorageError):
        strict()


def test_a_stuck_computation_elsewhere_fails_open_after_the_compute_wait(
    fs_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, compute_wait=0.3)
    with computing_elsewhere(fs_backend) as slow:
        assert slow() == (2, ())  # waited 0.3 s, then computed itself


def test_a_failed_read_inside_the_flight_releases_it(
    fs_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a StorageError raised while holding the flight leaked its stripe."""
    use_settings(monkeypatch, compute_wait=2.0)
    strategy = strategy_for(fs_backend)
    real = strategy._load_many
    reads = [0]

    def second_read_fails(keys: list[str]) -> Any:
        reads[0] += 1
        if reads[0] == 2:  # the read again under the flight's stripe
            raise cachekit.StorageError("injected: the disk went away")
        return real(keys)

    monkeypatch.setattr(strategy, "_load_many", second_read_fails)
    with pytest.raises(cachekit.StorageError, match="injected"):
        cachekit.get_or_compute(fs_backend, "k", lambda: 1, 60, tags=["t"])
    other: list[Any] = []
    thread = threading.Thread(
        target=lambda: other.append(
            cachekit.get_or_compute(fs_backend, "k", lambda: 2, 60, tags=["t"])
        )
    )
    thread.start()
    thread.join(SETTLE)
    assert other == [2]  # not LockTimeout: the stripe was released


# -- get_or_compute gains stale, beta and tags -----------------------------------------


def test_get_or_compute_with_stale_and_tags(backend: Any) -> None:
    origin = Origin()
    value = cachekit.get_or_compute(backend, "k", origin, 60, stale=60, tags=["g"])
    assert value == (1, ())
    age(backend, "k", 61)
    assert cachekit.get_or_compute(backend, "k", origin, 60, stale=60, tags=["g"]) == (1, ())
    settle(lambda: origin.calls == 2)
    cachekit.invalidate(backend, "g")
    assert cachekit.get_or_compute(backend, "k", origin, 60, stale=60, tags=["g"]) == (3, ())
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.get_or_compute(backend, "k", origin, 60, tags="g")


# -- Flask: the app's Cache, views, async ----------------------------------------------


@pytest.fixture
def app_and_counts(flask_cache: tuple[Flask, Any]) -> Iterator[tuple[Flask, dict[str, int]]]:
    app, cache = flask_cache
    counts = {"page": 0, "cookie": 0, "error": 0, "async": 0, "memo": 0}

    @app.get("/page/<name>")
    @cachekit.cached(cache, timeout=60, stale=60)
    def page(name: str) -> ResponseReturnValue:
        counts["page"] += 1
        return jsonify(name=name, args=request.args.to_dict(flat=False), n=counts["page"])

    @app.route("/cookie", methods=["GET", "POST"])
    @cachekit.cached(cache)
    def cookie() -> ResponseReturnValue:
        counts["cookie"] += 1
        response = make_response(jsonify(n=counts["cookie"]))
        response.set_cookie("user", "alice")
        return response

    @app.get("/error")
    @cachekit.cached(cache)
    def error() -> ResponseReturnValue:
        counts["error"] += 1
        return jsonify(n=counts["error"]), 500

    @app.get("/async")
    @cachekit.cached(cache, timeout=60, stale=60)
    async def asynchronous() -> ResponseReturnValue:
        await asyncio.sleep(0.01)
        counts["async"] += 1
        return jsonify(n=counts["async"])

    @cachekit.memoize(cache, timeout=60, stale=60)
    async def fetch(x: int) -> int:
        await asyncio.sleep(0.01)
        counts["memo"] += 1
        return x * 10

    app.config["fetch"] = fetch
    app.config["page"] = page
    yield app, counts


def test_cached_views_key_by_path_and_sorted_query(
    app_and_counts: tuple[Flask, dict[str, int]],
) -> None:
    app, counts = app_and_counts
    client = app.test_client()
    first = client.get("/page/a?x=1&y=2").get_json()
    assert client.get("/page/a?y=2&x=1").get_json() == first
    assert client.head("/page/a?x=1&y=2").status_code == 200
    assert counts["page"] == 1
    client.get("/page/a?x=2"), client.get("/page/b?x=1&y=2")
    assert counts["page"] == 3
    response = client.get("/page/a?x=1&y=2")
    assert response.headers["Content-Type"] == "application/json"
    app.config["page"].forget("/page/a", [("y", "2"), ("x", "1")])
    assert client.get("/page/a?x=1&y=2").get_json()["n"] == 4


def test_views_that_set_cookies_fail_or_are_posted_are_never_cached(
    app_and_counts: tuple[Flask, dict[str, int]],
) -> None:
    app, counts = app_and_counts
    client = app.test_client()
    for _ in range(2):
        client.get("/cookie"), client.post("/cookie"), client.get("/error")
    assert counts["cookie"] == 4 and counts["error"] == 2


def test_async_views_and_functions(app_and_counts: tuple[Flask, dict[str, int]]) -> None:
    app, counts = app_and_counts
    client = app.test_client()
    assert client.get("/async").get_json() == {"n": 1}
    assert client.get("/async").get_json() == {"n": 1}
    fetch = app.config["fetch"]
    with app.app_context():
        assert asyncio.run(fetch(2)) == 20 and asyncio.run(fetch(2)) == 20
        assert counts["memo"] == 1
        backend = next(iter(app.extensions["cache"].values()))
        age(backend, fetch.cache_key(2), 61)
        assert asyncio.run(fetch(2)) == 20  # stale, refreshed in a loop of its own
        settle(lambda: counts["memo"] == 2)
    backend = next(iter(app.extensions["cache"].values()))
    view: Any = app.view_functions["asynchronous"]
    age(backend, view.cache_key("/async"), 61)
    assert client.get("/async").get_json() == {"n": 1}  # stale; the refresh has the request
    settle(lambda: counts["async"] == 2)
    # The count rises inside the view, before the refresh stores what it returned.
    settle(lambda: client.get("/async").get_json() == {"n": 2})
    assert counts["async"] == 2


def test_statistics_of_every_worker_name_each_function(
    app_and_counts: tuple[Flask, dict[str, int]],
) -> None:
    app, _ = app_and_counts
    client = app.test_client()
    for _ in range(3):
        client.get("/page/a")
    with app.app_context():
        figures = cachekit.statistics(next(iter(app.extensions["cache"].values())))["memo"]
    page = figures[f"{__name__}.app_and_counts.<locals>.page"]
    assert page["misses"] == 1 and page["hits"] == 2 and page["computations"] == 1


# -- found by review -------------------------------------------------------------------


def test_a_view_that_reads_the_session_is_never_served_to_another_user(tmp_path: Path) -> None:
    from flask import session
    from flask_caching import Cache

    app = Flask(__name__)
    app.secret_key = "test"
    cache = Cache()
    config = {"CACHE_TYPE": "FileSystemCache", "CACHE_DIR": str(tmp_path), "CACHE_THRESHOLD": 0}
    cache.init_app(app, config=config)

    @app.get("/login/<user>")
    def login(user: str) -> ResponseReturnValue:
        session["user"] = user
        return "ok"

    @app.get("/me")
    @cachekit.cached(cache, timeout=60)
    def me() -> ResponseReturnValue:
        return f"hello {session.get('user')}"

    @app.get("/lang")
    @cachekit.cached(cache, timeout=60)
    def lang() -> ResponseReturnValue:
        response = make_response(request.headers.get("Accept-Language", "en"))
        response.vary.add("Accept-Language")
        return response

    @app.get("/api")
    @cachekit.cached(cache, timeout=60)
    def api() -> ResponseReturnValue:
        return request.headers.get("Authorization", "anonymous")

    alice, bob = app.test_client(), app.test_client()
    alice.get("/login/alice"), bob.get("/login/bob")
    assert alice.get("/me").text == "hello alice"
    assert bob.get("/me").text == "hello bob"
    assert alice.get("/me").headers.get("Vary") == "Cookie"  # Flask's own, kept
    assert alice.get("/lang", headers={"Accept-Language": "fr"}).text == "fr"
    assert bob.get("/lang", headers={"Accept-Language": "de"}).text == "de"
    assert alice.get("/api", headers={"Authorization": "Bearer a"}).text == "Bearer a"
    assert bob.get("/api", headers={"Authorization": "Bearer b"}).text == "Bearer b"
    assert bob.get("/api").text == "anonymous"


def test_tags_from_a_callable_must_be_a_collection(fs_backend: Any) -> None:
    @cachekit.memoize(fs_backend, timeout=60, tags=lambda user: f"user:{user}")
    def profile(user: int) -> int:
        return user

    with pytest.raises(cachekit.InvalidArgument, match="one character at a time"):
        profile(1)


def test_tags_in_any_order_match_the_stored_ones(fs_backend: Any) -> None:
    origin = Origin()
    orders = iter([["b", "a", "a"], ["a", "b"], ["b", "a"]])

    @cachekit.memoize(fs_backend, timeout=60, tags=lambda: next(orders))
    def f() -> Any:
        return origin()

    assert f() == f() == f() == (1, ())


def test_lambdas_need_a_name_and_names_keep_closures_apart(fs_backend: Any) -> None:
    with pytest.raises(cachekit.InvalidArgument, match="lambda"):
        cachekit.memoize(fs_backend, timeout=60)(lambda x: x)
    assert cachekit.memoize(fs_backend, timeout=60, name="double")(lambda x: 2 * x)(4) == 8

    def make(factor: int) -> Any:
        @cachekit.memoize(fs_backend, timeout=60, name=f"times{factor}")
        def times(x: int) -> int:
            return factor * x

        return times

    assert make(2)(5) == 10 and make(3)(5) == 15


def test_coroutines_of_one_loop_share_one_flight(fs_backend: Any) -> None:
    runs = []

    @cachekit.memoize(fs_backend, timeout=60)
    async def slow(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0.1)
        return x * 2

    async def many() -> list[int]:
        return list(await asyncio.gather(*(slow(1) for _ in range(5))))

    assert asyncio.run(many()) == [2] * 5
    assert runs == [1]


def test_a_string_that_looks_like_an_address_is_data(fs_backend: Any) -> None:
    @cachekit.memoize(fs_backend, timeout=60)
    def search(q: str, filters: dict[str, Any]) -> str:
        return q

    assert search("<a at 0x1>", {"k": ["<b at 0xff>"]}) == "<a at 0x1>"
    with pytest.raises(cachekit.InvalidArgument, match="memory address"):
        search("q", {"k": [NoRepr()]})


def test_a_failed_refresh_is_not_tried_again_at_once(fs_backend: Any) -> None:
    calls = []

    @cachekit.memoize(fs_backend, timeout=60, stale=60, beta=0)
    def flaky() -> int:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("origin down")
        return 1

    flaky()
    age(fs_backend, key_of(flaky), 61)
    for _ in range(50):
        assert flaky() == 1
        time.sleep(0.005)
    settle(lambda: figures_of(fs_backend, flaky)["refresh_errors"] == 1)
    assert len(calls) == 2  # one failed refresh in the back-off, not fifty


def test_a_memoized_call_under_a_held_lock_does_not_wait(fs_backend: Any) -> None:
    with computing_elsewhere(fs_backend) as slow:
        with cachekit.lock(fs_backend, "outer"):
            assert slow() == (2, ())  # computed itself, uncached, while the other is held
    assert slow() == (1, ())


def test_a_corrupt_generation_is_replaced(fs_backend: Any) -> None:
    origin = Origin()

    @cachekit.memoize(fs_backend, timeout=60, tags=("t",))
    def f() -> Any:
        return origin()

    f()
    path = strategy_for(fs_backend)._path(computed.tag_key("t"))  # type: ignore[attr-defined]
    with open(path, "r+b") as stored:
        stored.seek(4)
        stored.write(b"garbage" * 4)
    assert f() == (2, ())
    cachekit.invalidate(fs_backend, "t")
    assert f() == (3, ())


def test_plain_get_or_compute_refuses_a_record(fs_backend: Any) -> None:
    cachekit.get_or_compute(fs_backend, "k", lambda: 1, 60, stale=10)
    with pytest.raises(cachekit.InvalidArgument, match="read it the way it was written"):
        cachekit.get_or_compute(fs_backend, "k", lambda: 1, 60)
    with pytest.raises(cachekit.InvalidArgument, match="2106"):
        cachekit.memoize(fs_backend, timeout=2**33, name="far")(lambda: 1)


@pytest.mark.slow
def test_on_a_cluster_values_and_their_tags_may_live_in_any_slot(
    request: pytest.FixtureRequest,
) -> None:
    """No {hash tag} in the prefix: a value and its tags' generations lie in other slots."""
    from flask_caching.backends import RedisClusterCache

    cluster = request.getfixturevalue("redis_cluster")
    backend = RedisClusterCache(cluster=f"127.0.0.1:{cluster.port}", key_prefix="free-slots:")
    origin = Origin()

    @cachekit.memoize(backend, timeout=60, stale=60, tags=("a", "b", "c"))
    def f(x: int) -> Any:
        return origin(x)

    results = run_threads(8, lambda i: f(1))
    assert results == [(1, (1,))] * 8
    cachekit.invalidate(backend, "b")
    assert f(1) == (2, (1,))
    age(backend, key_of(f, 1), 61)
    assert f(1) == (2, (1,))  # stale, refreshed behind
    settle(lambda: f(1) == (3, (1,)))
    f.forget(1)
    assert f(1) == (4, (1,))
