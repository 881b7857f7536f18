"""Proof of a lease holder's death: only a process that is really gone frees its lock early.

A waiter may take over a lease before it runs out only if it proves the
holder's process gone (no such pid, a zombie, or the pid reused by another
process). Whatever it cannot see (``/proc`` hiding other users' processes,
an odd process name) counts as alive.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import time
from typing import Any

import pytest

from cachekit.redis import leases
from cachekit.redis.leases import GONE, MACHINE, _started, holder_is_dead

FORK = mp.get_context("fork")
pytestmark = pytest.mark.skipif(not MACHINE, reason="/proc cannot prove deaths here")


def token_of(pid: int | None, started: str | None = None) -> str:
    assert pid is not None
    return f"{MACHINE}.{pid}.{started or _started(pid)}.abc123"


def test_a_live_process_is_alive_and_a_reaped_one_dead() -> None:
    assert not holder_is_dead(token_of(os.getpid()))
    proc = FORK.Process(target=time.sleep, args=(0,))
    proc.start()
    token = token_of(proc.pid)
    proc.join(10)
    assert holder_is_dead(token)


def test_a_zombie_is_dead_and_a_reused_pid_is_not_its_holder() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        time.sleep(0.2)  # exited, not reaped: a zombie
        assert _started(pid) == GONE
        assert holder_is_dead(f"{MACHINE}.{pid}.12345.abc")
    finally:
        os.waitpid(pid, 0)
    assert holder_is_dead(token_of(os.getpid(), started="1"))  # same pid, another start: reused


def test_a_process_hidden_by_proc_counts_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """hidepid=2, ProtectProc=invisible, a security module: /proc/<pid> looks absent."""
    proc = FORK.Process(target=time.sleep, args=(30,))
    proc.start()
    try:
        token = token_of(proc.pid)
        real_open = open

        def hiding(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) == f"/proc/{proc.pid}/stat":
                raise FileNotFoundError(2, "No such file or directory", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", hiding)
        assert proc.pid is not None and _started(proc.pid) is None
        assert not holder_is_dead(token)

        def refusing(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) == f"/proc/{proc.pid}/stat":
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", refusing)
        assert not holder_is_dead(token)
    finally:
        proc.kill()
        proc.join(10)


def rename_and_wait(name: bytes, ready: Any) -> None:
    libc = ctypes.CDLL(None)
    libc.prctl(15, name)  # PR_SET_NAME: the kernel keeps 15 bytes, maybe half a character
    ready.set()
    time.sleep(30)


def test_a_process_name_that_is_not_utf8_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = FORK.Event()
    proc = FORK.Process(target=rename_and_wait, args=("abcdefghijklmnö) x".encode(), ready))
    proc.start()
    try:
        assert ready.wait(10)
        assert proc.pid is not None
        started = _started(proc.pid)
        assert started not in (None, GONE)
        assert not holder_is_dead(token_of(proc.pid, started))
        assert leases._process_identity().startswith(f"{MACHINE}.{os.getpid()}.")
    finally:
        proc.kill()
        proc.join(10)
