"""The in-process half of every lock: release on failure, per-process state after a fork."""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any

import pytest

import cachekit
from cachekit.threadlocks import KEYS, PerProcessValue, StripedLocks

FORK = mp.get_context("fork")


class FailingRelease(StripedLocks):
    """Cross-process release of one stripe fails, as a lost connection or an I/O error would."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing
        self.released: list[int] = []

    def _release_outer(self, number: int) -> bool:
        if number == self.failing:
            raise OSError("release failed")
        self.released.append(number)
        return True


def test_every_stripe_is_released_when_one_release_fails() -> None:
    names = ["a", "b", "c", "d"]
    probe = StripedLocks()
    numbers = sorted(probe.stripe(KEYS, name) for name in names)
    locks = FailingRelease(failing=numbers[1])
    with pytest.raises(OSError, match="release failed"):
        with locks.hold(KEYS, names, 1.0, "keys"):
            pass
    assert sorted(locks.released) == [n for n in numbers if n != numbers[1]]
    taken = threading.Event()

    def other_thread() -> None:  # every stripe's thread lock is free again
        with locks.hold(KEYS, [name for name in names], 1.0, "keys"):
            taken.set()

    locks.failing = -1
    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(5)
    assert taken.is_set()


def report_value(value: PerProcessValue[Any], parent: int, out: Any) -> None:
    out.put(id(value.get()) != parent)


def test_a_per_process_value_is_made_again_in_a_forked_child() -> None:
    value: PerProcessValue[threading.local] = PerProcessValue(lambda: threading.local())
    first = value.get()
    assert value.get() is first
    out = FORK.Queue()
    proc = FORK.Process(target=report_value, args=(value, id(first), out))
    proc.start()
    assert out.get(timeout=20) is True
    proc.join(10)


def lock_in_child(directory: str, out: Any) -> None:
    from cachelib import FileSystemCache

    with cachekit.lock(FileSystemCache(directory, threshold=0), "x", timeout=5):
        out.put("locked")


def test_a_child_forked_while_the_parent_holds_a_stripe_starts_unheld(tmp_path: Any) -> None:
    """A thread lock held at the fork would stay held forever in the child."""
    from cachelib import FileSystemCache

    cache = FileSystemCache(str(tmp_path / "c"), threshold=0)
    with cachekit.lock(cache, "y"):  # a different name: only the thread layer could block
        out = FORK.Queue()
        proc = FORK.Process(target=lock_in_child, args=(str(tmp_path / "c"), out))
        proc.start()
        assert out.get(timeout=20) == "locked"
        proc.join(10)
