"""A bounded soak: processes x threads mixing every helper over many keys.

Each worker draws random operations for a fixed time and records what it did;
at the end the stored state must equal, exactly, what those records imply.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import cachekit

from .test_processes import FORK, open_cache, run_workers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: Each case's length; ``SOAK_SECONDS=120 make test`` soaks longer.
SECONDS = float(os.environ.get("SOAK_SECONDS", "6"))
PROCESSES, THREADS = 4, 3
COUNTERS, LISTS, ACCOUNTS, PAGES = 10, 5, 6, 8
OPENING = 1000


def appended(items: list[Any], item: Any) -> list[Any]:
    return items + [item]


def compute_page(cache: Any, page: int) -> tuple[int, int]:
    """A computed value that counts its computations: each page must be computed once."""
    return page, cachekit.incr(cache, f"computed{page}")


def soak_worker(spec: str, start: Any, out: Any) -> None:
    cache = open_cache(spec)
    records: list[dict[str, Any]] = []

    def work(thread: int) -> None:
        rng = random.Random(os.getpid() * 100 + thread)
        done: dict[str, Any] = {
            "added": Counter(),
            "items": [],
            "moved": Counter(),
            "plain": 0,
            "pages": set(),
            "touched": set(),
            "operations": 0,
        }
        deadline = time.monotonic() + SECONDS
        sequence = 0
        while time.monotonic() < deadline:
            sequence += 1
            done["operations"] += 1
            choice = rng.randrange(5)
            if choice == 0:
                key, delta = f"counter{rng.randrange(COUNTERS)}", rng.randrange(-3, 10)
                cachekit.incr(cache, key, delta)
                done["added"][key] += delta
            elif choice == 1:
                key, item = f"list{rng.randrange(LISTS)}", (os.getpid(), thread, sequence)
                cachekit.update(cache, key, partial(appended, item=item), [])
                done["items"].append((key, item))
            elif choice == 2:
                a, b = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randrange(1, 50)
                with cachekit.transaction(cache, f"account{a}", f"account{b}") as txn:
                    txn[f"account{a}"] = txn.get(f"account{a}", OPENING) - amount
                    txn[f"account{b}"] = txn.get(f"account{b}", OPENING) + amount
                done["moved"][f"account{a}"] -= amount
                done["moved"][f"account{b}"] += amount
                done["touched"].update((a, b))
            elif choice == 3:
                with cachekit.lock(cache, "section", timeout=30):
                    cache.set("plain", (cache.get("plain") or 0) + 1, timeout=0)
                done["plain"] += 1
            else:
                page = rng.randrange(PAGES)
                value = cachekit.get_or_compute(
                    cache, f"page{page}", partial(compute_page, cache, page), timeout=0
                )
                assert value == (page, 1)
                done["pages"].add(page)
        records.append(done)

    start.wait(timeout=30)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(records)


@pytest.mark.parametrize("kind", ["FileSystemCache", "LMDBCache", "RedisCache"])
def test_soak_matches_an_exact_model(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "RedisCache":
        spec = f"{request.getfixturevalue('redis_url')}|soak-{os.getpid()}-{time.time_ns()}:"
    elif kind == "LMDBCache":
        spec = f"lmdb:{tmp_path / 'lmdb'}"
    else:
        spec = str(tmp_path / "cache")
    records = [
        record for chunk in run_workers(FORK, PROCESSES, soak_worker, spec) for record in chunk
    ]
    assert len(records) == PROCESSES * THREADS

    cache = open_cache(spec)
    added: Counter[str] = sum((r["added"] for r in records), Counter())
    for i in range(COUNTERS):
        assert (cache.get(f"counter{i}") or 0) == added[f"counter{i}"]
    items = [entry for r in records for entry in r["items"]]
    for i in range(LISTS):
        expected = Counter(item for key, item in items if key == f"list{i}")
        assert Counter(cache.get(f"list{i}") or []) == expected
    moved: Counter[str] = Counter()
    for r in records:
        moved.update(r["moved"])
    touched = set().union(*(r["touched"] for r in records))
    assert [cache.get(f"account{i}") for i in range(ACCOUNTS)] == [
        OPENING + moved[f"account{i}"] if i in touched else None for i in range(ACCOUNTS)
    ]
    assert (cache.get("plain") or 0) == sum(r["plain"] for r in records)
    for page in set().union(*(r["pages"] for r in records)):
        assert cache.get(f"computed{page}") == 1
    assert sum(r["operations"] for r in records) > 1000  # it really ran
