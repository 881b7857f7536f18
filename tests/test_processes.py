"""Exact results across real processes (and their threads) on every shared backend.

Each test runs on FileSystemCache, LMDBCache and RedisCache (a real redis-server).
Workers are started with ``fork`` (as gunicorn starts its workers) after the
parent has used cachekit, and with ``spawn`` (fresh interpreters). Every test
asserts exact results: every number once, every item once, money conserved.
A worker is handed a *spec* (a cache directory, or a Redis URL and key prefix)
and opens its own backend from it, as a worker process would.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from cachelib import FileSystemCache, RedisCache

import cachekit
from cachekit import LMDBCache

from .conftest import use_settings

FORK = mp.get_context("fork")
SPAWN = mp.get_context("spawn")


def open_cache(spec: str) -> Any:
    if spec.startswith("redis://"):
        url, prefix = spec.split("|")
        return RedisCache(host=redis.Redis.from_url(url), key_prefix=prefix)
    if spec.startswith("lmdb:"):
        return LMDBCache(spec.removeprefix("lmdb:"))
    return FileSystemCache(spec, threshold=0)


@pytest.fixture(params=["FileSystemCache", "LMDBCache", "RedisCache"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The spec of a backend shared by processes: a directory, or Redis URL|prefix."""
    if request.param == "RedisCache":
        return f"{request.getfixturevalue('redis_url')}|procs-{uuid.uuid4().hex[:8]}:"
    if request.param == "LMDBCache":
        return f"lmdb:{tmp_path / 'lmdb'}"
    return str(tmp_path / "cache")


def count_worker(directory: str, threads: int, per_thread: int, start: Any, out: Any) -> None:
    cache = open_cache(directory)
    results: list[int] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait(timeout=30)
        got = [cachekit.incr(cache, "n") for _ in range(per_thread)]
        results.extend(got)

    start.wait(timeout=30)
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put(results)


def run_workers(ctx: Any, count: int, target: Any, *args: Any) -> list[Any]:
    start = ctx.Barrier(count)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for _ in range(count)]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs)
    return results


@pytest.mark.parametrize("ctx", [FORK, SPAWN], ids=["fork", "spawn"])
def test_processes_and_threads_get_every_number_once(shared: str, ctx: Any) -> None:
    directory = shared
    processes, threads, per_thread = 4, 4, 60
    cachekit.incr(open_cache(directory), "warm-up")  # the parent uses cachekit before forking
    chunks = run_workers(ctx, processes, count_worker, directory, threads, per_thread)
    total = processes * threads * per_thread
    assert sorted(n for chunk in chunks for n in chunk) == list(range(1, total + 1))
    assert open_cache(directory).get("n") == total


def appended(log: dict[str, Any], item: tuple[int, int]) -> dict[str, Any]:
    return {**log, "items": log["items"] + [item]}


def append_worker(directory: str, start: Any, out: Any) -> None:
    cache = open_cache(directory)
    start.wait(timeout=30)
    me = os.getpid()
    for i in range(100):
        if i % 2:
            cachekit.update(cache, "log", partial(appended, item=(me, i)), {"items": []})
        else:
            with cachekit.transaction(cache, "log") as txn:
                txn.setdefault("log", {"items": []})["items"].append((me, i))
    out.put(me)


def test_processes_append_every_item_once(shared: str) -> None:
    directory = shared
    pids = run_workers(FORK, 4, append_worker, directory)
    items = open_cache(directory).get("log")["items"]
    assert Counter(items) == Counter((pid, i) for pid in pids for i in range(100))


def transfer_worker(directory: str, start: Any, out: Any) -> None:
    cache = open_cache(directory)
    start.wait(timeout=30)
    keys = ("a", "b") if os.getpid() % 2 else ("b", "a")
    for _ in range(150):
        with cachekit.transaction(cache, *keys) as txn:
            txn[keys[0]] = txn.get(keys[0], 0) - 1
            txn[keys[1]] = txn.get(keys[1], 0) + 1
    out.put(keys)


def test_transfers_across_processes_conserve_the_total(shared: str) -> None:
    directory = shared
    orders = run_workers(FORK, 4, transfer_worker, directory)
    cache = open_cache(directory)
    assert cache.get("a") + cache.get("b") == 0
    moved = sum(150 if keys == ("a", "b") else -150 for keys in orders)
    assert cache.get("b") == moved


def lock_worker(directory: str, start: Any, out: Any) -> None:
    cache = open_cache(directory)
    start.wait(timeout=30)
    for _ in range(100):
        with cachekit.lock(cache, "section", timeout=30):
            value = cache.get("plain") or 0  # a plain get/set: only the lock makes it exact
            cache.set("plain", value + 1, timeout=0)
    out.put(True)


def test_lock_excludes_processes(shared: str) -> None:
    directory = shared
    run_workers(FORK, 4, lock_worker, directory)
    assert open_cache(directory).get("plain") == 400


def compute_worker(directory: str, start: Any, out: Any) -> None:
    cache = open_cache(directory)

    def expensive() -> dict[str, Any]:
        time.sleep(0.3)
        return {"by": os.getpid(), "run": cachekit.incr(cache, "computations")}

    start.wait(timeout=30)
    out.put(cachekit.get_or_compute(cache, "expensive", expensive))


def test_get_or_compute_computes_once_across_processes(shared: str) -> None:
    directory = shared
    results = run_workers(FORK, 6, compute_worker, directory)
    assert len({repr(r) for r in results}) == 1
    assert results[0]["run"] == 1
    assert open_cache(directory).get("computations") == 1


# -- a holder that dies ---------------------------------------------------------------


def hold_lock_forever(directory: str, ready: Any) -> None:
    with cachekit.lock(open_cache(directory), "held"):
        ready.set()
        time.sleep(120)


def die_inside_update(directory: str, ready: Any) -> None:
    def slow(value: int) -> int:
        ready.set()
        time.sleep(120)
        return value + 1000

    cachekit.update(open_cache(directory), "n", slow)


def die_inside_transaction(directory: str, ready: Any) -> None:
    with cachekit.transaction(open_cache(directory), "n") as txn:
        txn["n"] += 1000
        ready.set()
        time.sleep(120)


@pytest.mark.parametrize("victim", [hold_lock_forever, die_inside_update, die_inside_transaction])
def test_a_dead_holder_frees_its_lock(
    shared: str, victim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At once: the kernel drops a file lock; on Redis a waiter proves the holder's process gone.

    The Redis lease is set far longer than the test may wait, so that only the
    proof of the holder's death can free the lock in time.
    """
    redis_lease = 30.0
    if victim is die_inside_update and shared.startswith(("redis://", "lmdb:")):
        pytest.skip("update on Redis and LMDBCache is optimistic: it holds no lock to die with")
    if shared.startswith("redis://"):
        use_settings(monkeypatch, lease=redis_lease)
    use_settings(monkeypatch, key_wait=0.2)
    directory = shared
    cache = open_cache(directory)
    cachekit.incr(cache, "n")
    ready = FORK.Event()
    proc = FORK.Process(target=victim, args=(directory, ready))
    proc.start()
    try:
        assert ready.wait(20)
        with pytest.raises(cachekit.LockTimeout):  # it really holds the lock
            if victim is hold_lock_forever:
                cachekit.lock(cache, "held", timeout=0.2).__enter__()
            else:
                cachekit.update(cache, "n", lambda n: n)
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind in the victim
        proc.join(10)
    began = time.monotonic()
    with cachekit.lock(cache, "held", timeout=5):
        # The key's lock is free too, and the old value untouched by the dead update.
        assert cachekit.update(cache, "n", lambda n: n + 1) == 2
    assert time.monotonic() - began < 1


def fork_and_lock(directory: str, out: Any) -> None:
    with cachekit.lock(open_cache(directory), "shared", timeout=10):
        out.put("locked")


def test_a_fork_while_another_thread_holds_a_lock(shared: str) -> None:
    """The child must wait for the parent's holder, not for a copy of a held thread lock."""
    directory = shared
    cache = open_cache(directory)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with cachekit.lock(cache, "shared"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    out = FORK.Queue()
    proc = FORK.Process(target=fork_and_lock, args=(directory, out))
    proc.start()
    time.sleep(0.3)
    assert out.empty()  # the parent's thread still holds it
    release.set()
    thread.join()
    assert out.get(timeout=10) == "locked"
    proc.join(10)
    assert proc.exitcode == 0
