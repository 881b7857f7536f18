"""The public contract, run against every backend in ``conftest.BACKENDS``.

Everything here holds whatever the backend; what is specific to one backend
lives in that backend's test file.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import cachekit
from cachekit.resolve import strategy_for

from .conftest import BACKENDS


def run_threads(count: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads started together; return results in order.

    The interpreter switches threads every microsecond meanwhile, so that a
    read-modify-write left unprotected interleaves and the test fails.
    """
    barrier = threading.Barrier(count)

    def start(i: int) -> Any:
        barrier.wait(timeout=10)
        return target(i)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(start, range(count)))
    finally:
        sys.setswitchinterval(interval)


# -- incr ---------------------------------------------------------------------


def test_incr_counts_from_zero_and_adds_delta(backend: Any) -> None:
    assert cachekit.incr(backend, "n") == 1
    assert cachekit.incr(backend, "n", 5) == 6
    assert cachekit.incr(backend, "n", -10) == -4
    assert backend.get("n") == -4


def test_incr_reads_a_value_set_by_plain_cache_set(backend: Any) -> None:
    backend.set("n", 41)
    assert cachekit.incr(backend, "n") == 42


def test_incr_refuses_a_non_int_and_keeps_it(backend: Any) -> None:
    backend.set("name", "alice", timeout=0)
    with pytest.raises(cachekit.ValueTypeError, match="holds a str, not an int"):
        cachekit.incr(backend, "name")
    assert backend.get("name") == "alice"


@pytest.mark.parametrize("delta", [1.5, True, "1"])
def test_incr_refuses_a_non_int_delta(backend: Any, delta: Any) -> None:
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.incr(backend, "n", delta)
    assert backend.get("n") is None


def test_threads_get_every_number_exactly_once(backend: Any) -> None:
    per_thread = 150

    def work(_: int) -> list[int]:
        return [cachekit.incr(backend, "n") for _ in range(per_thread)]

    results = [n for chunk in run_threads(8, work) for n in chunk]
    assert sorted(results) == list(range(1, 8 * per_thread + 1))
    assert backend.get("n") == 8 * per_thread


# -- update -------------------------------------------------------------------


def test_update_nested_values(backend: Any) -> None:
    assert cachekit.update(backend, "state", lambda d: {**d, "n": d["n"] + 1}, {"n": 0}) == {"n": 1}
    cachekit.update(backend, "state", lambda d: {**d, "n": d["n"] + 1})
    assert backend.get("state") == {"n": 2}
    cachekit.update(backend, "lists", lambda d: d.setdefault("a", []).append(1) or d, {})
    cachekit.update(backend, "lists", lambda d: d.setdefault("a", []).append(2) or d, {})
    assert backend.get("lists") == {"a": [1, 2]}


def test_update_gives_fn_its_own_copy_of_the_default(backend: Any) -> None:
    default: dict[str, list[int]] = {"items": []}
    cachekit.update(backend, "a", lambda d: d["items"].append(1) or d, default)
    cachekit.update(backend, "b", lambda d: d["items"].append(2) or d, default)
    assert default == {"items": []}
    assert backend.get("b") == {"items": [2]}


def test_update_fn_raising_writes_nothing_and_releases(backend: Any) -> None:
    backend.set("k", [1], timeout=0)

    def boom(value: Any) -> Any:
        value.append(2)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cachekit.update(backend, "k", boom)
    assert backend.get("k") == [1]
    # The lock was released: another thread updates at once.
    assert run_threads(1, lambda _: cachekit.update(backend, "k", lambda v: v + [3])) == [[1, 3]]


def test_update_with_unserializable_result_keeps_old_value(backend: Any) -> None:
    cachekit.incr(backend, "k")
    with pytest.raises(cachekit.SerializationError, match="'k'"):
        cachekit.update(backend, "k", lambda _: threading.Lock())
    assert backend.get("k") == 1
    assert cachekit.incr(backend, "k") == 2


def appended(items: list[Any], item: Any) -> list[Any]:
    return items + [item]


def test_threads_append_every_item_once(backend: Any) -> None:
    def work(i: int) -> None:
        for j in range(50):
            cachekit.update(backend, "items", partial(appended, item=(i, j)), [])

    run_threads(8, work)
    items = backend.get("items")
    assert sorted(items) == [(i, j) for i in range(8) for j in range(50)]


# -- transaction --------------------------------------------------------------


def test_transaction_yields_current_values_missing_keys_absent(backend: Any) -> None:
    backend.set("a", 1, timeout=0)
    with cachekit.transaction(backend, "a", "b") as txn:
        assert dict(txn) == {"a": 1}
        txn["b"] = txn["a"] + 1
    assert (backend.get("a"), backend.get("b")) == (1, 2)


def test_transaction_writes_in_place_edits_of_nested_values(backend: Any) -> None:
    backend.set("doc", {"tags": ["x"], "meta": {"n": 1}}, timeout=0)
    with cachekit.transaction(backend, "doc") as txn:
        txn["doc"]["tags"].append("y")
        txn["doc"]["meta"]["n"] += 1
    assert backend.get("doc") == {"tags": ["x", "y"], "meta": {"n": 2}}


def test_transaction_del_deletes(backend: Any) -> None:
    backend.set("a", 1, timeout=0)
    with cachekit.transaction(backend, "a") as txn:
        del txn["a"]
    assert not backend.has("a")
    assert cachekit.incr(backend, "a") == 1


def test_transaction_that_raises_writes_nothing(backend: Any) -> None:
    backend.set("a", {"n": 1}, timeout=0)
    with pytest.raises(KeyError):
        with cachekit.transaction(backend, "a", "b") as txn:
            txn["a"]["n"] = 99
            txn["b"] = 5
            raise KeyError("stop")
    assert backend.get("a") == {"n": 1}
    assert not backend.has("b")


def test_transaction_refuses_keys_it_does_not_hold(backend: Any) -> None:
    with pytest.raises(cachekit.InvalidArgument, match="not locked"):
        with cachekit.transaction(backend, "a") as txn:
            txn["other"] = 1
    assert not backend.has("other")


def test_transactions_in_opposite_key_orders_do_not_deadlock(backend: Any) -> None:
    for key in ("a", "b"):
        backend.set(key, 1000, timeout=0)

    def work(i: int) -> None:
        keys = ("a", "b") if i % 2 else ("b", "a")
        for _ in range(100):
            with cachekit.transaction(backend, *keys) as txn:
                txn[keys[0]] -= 1
                txn[keys[1]] += 1

    run_threads(8, work)
    assert backend.get("a") + backend.get("b") == 2000
    assert backend.get("a") == 1000  # as many moves each way


def test_transaction_with_unserializable_value_writes_no_key(backend: Any) -> None:
    with pytest.raises(cachekit.SerializationError):
        with cachekit.transaction(backend, "a", "b") as txn:
            txn["a"] = 1
            txn["b"] = lambda: None
    assert not backend.has("a") and not backend.has("b")


# -- lock ---------------------------------------------------------------------


def test_lock_excludes_threads(backend: Any) -> None:
    backend.set("n", 0, timeout=0)

    def work(_: int) -> None:
        for _ in range(50):
            with cachekit.lock(backend, "counter"):
                value = backend.get("n")
                time.sleep(0)
                backend.set("n", value + 1, timeout=0)

    run_threads(6, work)
    assert backend.get("n") == 300


def test_lock_times_out_with_a_clear_error(backend: Any) -> None:
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with cachekit.lock(backend, "busy"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        began = time.monotonic()
        with pytest.raises(cachekit.LockTimeout, match="'busy'") as raised:
            with cachekit.lock(backend, "busy", timeout=0.2):
                pytest.fail("lock taken while held")
        assert 0.2 <= time.monotonic() - began < 5
        assert isinstance(raised.value, TimeoutError)
        assert isinstance(raised.value, cachekit.CachekitError)
    finally:
        release.set()
        thread.join()
    with cachekit.lock(backend, "busy", timeout=1):
        pass


def test_lock_is_reentrant_in_one_thread(backend: Any) -> None:
    with cachekit.lock(backend, "outer", timeout=1):
        with cachekit.lock(backend, "outer", timeout=1):
            pass


def test_lock_hands_out_growing_fencing_tokens(backend: Any) -> None:
    tokens = []
    for _ in range(5):
        with cachekit.lock(backend, "fenced") as handle:
            assert handle.is_held()
            handle.check()
            with cachekit.lock(backend, "fenced") as inner:  # re-entrant: the same grant
                assert inner.token == handle.token
            tokens.append(handle.token)
        assert not handle.is_held()
        with pytest.raises(cachekit.LeaseLost):
            handle.check()
    assert tokens == sorted(set(tokens)) and all(isinstance(t, int) and t > 0 for t in tokens)


def test_fencing_tokens_are_exact_across_threads(backend: Any) -> None:
    """Every grant's token exceeds the previous holder's: the order they held the lock in."""
    held: list[int] = []

    def work(_: int) -> None:
        for _ in range(20):
            with cachekit.lock(backend, "fenced", timeout=30) as handle:
                held.append(handle.token)

    run_threads(6, work)
    assert len(held) == 120 and held == sorted(set(held))


# -- get_or_compute -----------------------------------------------------------


def test_get_or_compute_runs_fn_once_for_concurrent_misses(backend: Any) -> None:
    calls = []

    def compute() -> dict[str, int]:
        calls.append(1)
        time.sleep(0.2)
        return {"answer": 42}

    results = run_threads(12, lambda _: cachekit.get_or_compute(backend, "slow", compute))
    assert results == [{"answer": 42}] * 12
    assert len(calls) == 1
    assert backend.get("slow") == {"answer": 42}


def test_get_or_compute_caches_none(backend: Any) -> None:
    calls = []
    assert cachekit.get_or_compute(backend, "nothing", lambda: calls.append(1)) is None
    assert cachekit.get_or_compute(backend, "nothing", lambda: calls.append(1)) is None
    assert len(calls) == 1


def test_get_or_compute_fn_raising_caches_nothing(backend: Any) -> None:
    def fail() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        cachekit.get_or_compute(backend, "k", fail)
    assert cachekit.get_or_compute(backend, "k", lambda: 7) == 7


# -- nesting ------------------------------------------------------------------


def test_get_or_compute_fn_may_call_incr(backend: Any) -> None:
    def compute() -> int:
        return cachekit.incr(backend, "computations") * 100

    results = run_threads(6, lambda _: cachekit.get_or_compute(backend, "v", compute))
    assert results == [100] * 6
    assert backend.get("computations") == 1


def test_lock_held_around_update(backend: Any) -> None:
    def work(_: int) -> None:
        for _ in range(30):
            with cachekit.lock(backend, "report", timeout=10):
                cachekit.update(backend, "report", lambda n: n + 1, 0)

    run_threads(4, work)
    assert backend.get("report") == 120


def test_update_of_another_key_inside_a_transaction(backend: Any) -> None:
    with cachekit.transaction(backend, "a") as txn:
        txn["a"] = cachekit.update(backend, "b", lambda n: n + 1, 0) + 10
    assert (backend.get("a"), backend.get("b")) == (11, 1)


def test_nested_modification_of_the_same_key_is_refused(backend: Any) -> None:
    backend.set("k", 1, timeout=0)
    with pytest.raises(cachekit.InvalidArgument, match="already being modified"):
        cachekit.update(backend, "k", lambda v: cachekit.incr(backend, "k") + v)
    with pytest.raises(cachekit.InvalidArgument, match="already being modified"):
        with cachekit.transaction(backend, "k", "j"):
            with cachekit.transaction(backend, "j"):
                pass
    assert backend.get("k") == 1
    assert cachekit.incr(backend, "k") == 2


def test_nesting_against_the_order_ends_in_lock_timeout_not_a_hang(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """update-then-lock in one thread against lock-then-update in another: bounded waits."""
    from .conftest import use_settings

    use_settings(monkeypatch, key_wait=0.5)
    if hasattr(backend, "_cachekit_strategy"):
        del backend._cachekit_strategy
    both_in = threading.Barrier(2)
    outcomes: list[str] = []

    first_call = threading.Event()

    def inner_lock(value: int | None) -> int:
        if not first_call.is_set():  # on Redis fn may run again: meet only once
            first_call.set()
            both_in.wait(5)
        with cachekit.lock(backend, "L", timeout=0.5):
            return (value or 0) + 1

    def update_then_lock() -> None:
        try:
            cachekit.update(backend, "k", inner_lock)
            outcomes.append("ok")
        except cachekit.LockTimeout:
            outcomes.append("timeout")

    def lock_then_update() -> None:
        try:
            with cachekit.lock(backend, "L", timeout=0.5):
                both_in.wait(5)
                cachekit.update(backend, "k", lambda v: (v or 0) + 1)
            outcomes.append("ok")
        except cachekit.LockTimeout:
            outcomes.append("timeout")

    began = time.monotonic()
    threads = [threading.Thread(target=update_then_lock), threading.Thread(target=lock_then_update)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert time.monotonic() - began < 10 and len(outcomes) == 2
    assert (backend.get("k") or 0) == outcomes.count("ok")  # each success once, nothing more


# -- expiry -------------------------------------------------------------------


def test_state_outlives_the_default_timeout_and_numbers_set_expiry(backend: Any) -> None:
    backend.default_timeout = 1
    cachekit.incr(backend, "kept")
    cachekit.update(backend, "kept-too", lambda _: "x")
    cachekit.incr(backend, "brief", timeout=1)
    backend.set("ttl", 10, timeout=1)
    cachekit.incr(backend, "ttl")  # keeps the remaining second
    cachekit.get_or_compute(backend, "computed", lambda: "cached")  # default timeout
    time.sleep(2.1)
    assert backend.get("kept") == 1
    assert backend.get("kept-too") == "x"
    assert backend.get("brief") is None
    assert backend.get("ttl") is None
    assert backend.get("computed") is None
    assert cachekit.incr(backend, "brief") == 1  # an expired key counts as missing


def remaining_lifetime(backend: Any, key: str) -> float:
    """Seconds until ``key`` expires, 0 if it never does, read from the backend's storage."""
    if hasattr(backend, "_write_client"):  # RedisCache, ValkeyCache: the server's own TTL
        ms = backend._write_client.pttl(backend._get_prefix() + key)
        assert ms != -2, "missing key"
        return 0.0 if ms == -1 else ms / 1000
    entry = strategy_for(backend)._load(key)
    assert entry is not None, "missing key"
    return 0.0 if entry.expires == 0 else entry.expires - time.time()


def test_timeout_none_keeps_an_existing_expiry(backend: Any) -> None:
    backend.set("k", 1, timeout=1000)
    cachekit.incr(backend, "k")
    cachekit.update(backend, "k", lambda n: n + 1)
    with cachekit.transaction(backend, "k") as txn:
        txn["k"] += 1
    assert backend.get("k") == 4
    assert 990 < remaining_lifetime(backend, "k") <= 1000
    cachekit.incr(backend, "new")
    assert remaining_lifetime(backend, "new") == 0
    cachekit.incr(backend, "k", timeout=0)
    assert remaining_lifetime(backend, "k") == 0
    cachekit.update(backend, "k", lambda n: n + 1, timeout=50)
    assert 48 < remaining_lifetime(backend, "k") <= 51


@pytest.mark.parametrize("timeout", [-1, float("nan"), "10", True, 10**12])
def test_bad_timeouts_are_refused(backend: Any, timeout: Any) -> None:
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.incr(backend, "k", timeout=timeout)
    assert backend.get("k") is None


# -- arguments ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["", None, 1, b"k"])
def test_keys_must_be_non_empty_strings(backend: Any, key: Any) -> None:
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.incr(backend, key)
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.lock(backend, key)


def test_results_are_exact_under_mixed_helpers(backend: Any) -> None:
    def work(i: int) -> None:
        for j in range(40):
            cachekit.incr(backend, "hits")
            with cachekit.transaction(backend, "log", "hits-seen") as txn:
                txn.setdefault("log", []).append((i, j))
                txn["hits-seen"] = txn.get("hits-seen", 0) + 1
            cachekit.get_or_compute(backend, f"page-{j % 5}", partial(str, j))

    run_threads(6, work)
    assert backend.get("hits") == backend.get("hits-seen") == 240
    assert Counter(backend.get("log")) == Counter((i, j) for i in range(6) for j in range(40))


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_a_backend_is_freed_once_unused(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """cachekit's per-backend state must not keep a discarded backend alive."""
    import gc
    import weakref

    backend = BACKENDS[kind](request, tmp_path)
    cachekit.incr(backend, "n")
    cachekit.update(backend, "doc", lambda d: {"n": 1})
    for client in {getattr(backend, name, None) for name in ("_read_client", "_write_client")}:
        if client is not None:
            client.close()  # else redis-py warns of its open socket when it is collected
    ref = weakref.ref(backend)
    del backend
    gc.collect()
    assert ref() is None
