"""Runs the workloads across processes or gunicorn workers while faults are injected.

A run: start the clients, let the nemesis inject one fault after another for
``seconds``, heal everything, read the final state with a fresh client and
hand the history and state to :mod:`.checker`.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from ..redisserver import RedisServer
from .checker import ERASED, OUTAGE
from .history import INFO, Op, Recorder, load
from .workloads import KINDS, open_cache, run_op

FORK = mp.get_context("fork")


@dataclass
class Target:
    """What the faults act on: the client processes, the server, gunicorn's master."""

    spawn: Callable[[], Any] | None = None  # start one more client process
    procs: list[Any] = field(default_factory=list)
    server: RedisServer | None = None
    master: int = 0  # gunicorn's master pid
    lease: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    done: list[str] = field(default_factory=list)
    #: What may excuse a holder told LeaseLost: (pid or 0 for any, began, ended) of each
    #: pause of a process and each restart of a Redis that persists nothing.
    excuses: list[tuple[int, float, float]] = field(default_factory=list)
    timers: list[threading.Timer] = field(default_factory=list)  # pending resumptions
    paused: set[int] = field(default_factory=set)

    def victims(self) -> list[int]:
        if self.master:
            return gunicorn_workers(self.master)
        return [proc.pid for proc in self.procs if proc.is_alive()]


# -- faults ----------------------------------------------------------------------------


def kill9(target: Target) -> None:
    """SIGKILL a client process (a worker) wherever it is; a new one takes its place."""
    victims = target.victims()
    if victims:
        os.kill(target.rng.choice(victims), signal.SIGKILL)
        if target.spawn is not None:
            target.procs.append(target.spawn())


def pause(target: Target) -> None:
    """SIGSTOP a client for longer than a lease (a GC or VM pause), then resume it."""
    victims = [pid for pid in target.victims() if pid not in target.paused]
    if victims:
        victim = target.rng.choice(victims)
        began = time.monotonic()
        target.paused.add(victim)
        os.kill(victim, signal.SIGSTOP)

        def resume() -> None:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
            target.excuses.append((victim, began, time.monotonic()))
            target.paused.discard(victim)

        timer = threading.Timer(target.lease * 2.5, resume)  # other faults go on meanwhile
        timer.start()
        target.timers.append(timer)


def client_kill(target: Target) -> None:
    """Drop every client connection to Redis (a proxy's idle kill, a blip, a failover)."""
    assert target.server is not None
    admin = redis.Redis(port=target.server.port)
    admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()


def restart(target: Target) -> None:
    """Stop and start the Redis server (its data kept only if it persists)."""
    assert target.server is not None
    began = time.monotonic()
    target.server.stop()
    time.sleep(0.2)
    target.server.start()
    ended = time.monotonic()
    if not target.server.durable:  # its leases are gone: any holder of the time may be told
        target.excuses.append((ERASED, began, ended))
    elif ended - began > target.lease / 2:  # down long enough for a lease to run out
        target.excuses.append((OUTAGE, began, ended))


def memory_pressure(target: Target) -> None:
    """Fill Redis with keys that have a TTL until it has evicted 100 of them."""
    assert target.server is not None
    admin = redis.Redis(port=target.server.port)
    start = int(admin.info("stats")["evicted_keys"])
    junk = b"j" * 20000
    for i in range(5000):
        admin.set(f"junk:{target.rng.random()}:{i}", junk, ex=600)
        if i % 50 == 0 and int(admin.info("stats")["evicted_keys"]) - start >= 100:
            break
    admin.close()


def reload_workers(target: Target) -> None:
    """SIGHUP gunicorn's master: new workers, the old ones finish what they serve."""
    os.kill(target.master, signal.SIGHUP)


FAULTS: dict[str, Callable[[Target], None]] = {
    "kill9": kill9,
    "pause": pause,
    "client_kill": client_kill,
    "restart": restart,
    "memory": memory_pressure,
    "reload": reload_workers,
}


def nemesis(target: Target, faults: list[str], seconds: float, interval: float) -> None:
    """Inject the faults in turn (in a shuffled order) until ``seconds`` have passed."""
    order = list(faults)
    target.rng.shuffle(order)
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        time.sleep(min(interval, max(0.0, stop_at - time.monotonic())))
        if time.monotonic() >= stop_at:
            break
        name = order[len(target.done) % len(order)]  # each fault in turn: none is left out
        FAULTS[name](target)
        target.done.append(name)
    for timer in target.timers:  # every paused process resumed before the run ends
        timer.join()


def gunicorn_workers(master: int) -> list[int]:
    """The pids of gunicorn's worker processes (children of the master)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master and fields[0] not in "ZX":
                workers.append(int(entry.name))
    return workers


# -- clients: processes ----------------------------------------------------------


def client_process(spec: str, folder: str, until: float, seed: int, kinds: tuple[str, ...]) -> None:
    """A client process: two threads running random operations until ``until``."""
    cache = open_cache(spec)
    recorder = Recorder(Path(folder))
    nonce = recorder.nonce

    def loop(thread: int) -> None:
        rng = random.Random(seed * 10 + thread)
        n = 0
        while time.monotonic() < until:
            n += 1
            kind = rng.choice(kinds)
            arg: Any = (
                f"{os.getpid()}.{nonce}.{thread}.{n}" if kind == "append" else rng.random() < 0.5
            )
            with recorder.op(kind, arg) as result:
                result["outcome"], result["value"] = run_op(cache, kind, arg, rng)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_processes(
    specs: list[str],
    folder: Path,
    seconds: float,
    faults: list[str],
    *,
    server: RedisServer | None = None,
    lease: float = 1.0,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
) -> tuple[list[Op], Target]:
    """Client processes (one per spec, spelled as given) under the faults; their history."""
    folder.mkdir(parents=True, exist_ok=True)
    until = time.monotonic() + seconds
    rng = random.Random(seed)
    count = iter(range(10**6))

    def spawn() -> Any:
        n = next(count)
        spec = specs[n % len(specs)]
        proc = FORK.Process(
            target=client_process, args=(spec, str(folder), until, seed * 1000 + n, kinds)
        )
        proc.start()
        return proc

    target = Target(spawn=spawn, server=server, lease=lease, rng=rng)
    target.procs = [spawn() for _ in specs]
    nemesis(target, faults, seconds - 0.5, interval=max(0.3, seconds / 12))
    for proc in target.procs:
        if proc.is_alive() and proc.pid:
            os.kill(proc.pid, signal.SIGCONT)
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    return load(folder), target


# -- clients: HTTP against gunicorn ------------------------------------------------


def run_http(
    base: str,
    master: int,
    seconds: float,
    faults: list[str],
    *,
    server: RedisServer | None = None,
    lease: float = 1.0,
    clients: int = 16,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
) -> tuple[list[Op], Target]:
    """HTTP clients against gunicorn workers, under the faults; the history they saw."""
    until = time.monotonic() + seconds
    history: list[Op] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        n = 0
        while time.monotonic() < until:
            n += 1
            kind = rng.choice(kinds)
            arg: Any = f"c{i}.{n}" if kind == "append" else int(rng.random() < 0.5)
            op = Op(f"c{i}-{n}", kind, arg, began=time.monotonic())
            try:
                url = f"{base}/op/{kind}?arg={arg}"
                with urllib.request.urlopen(url, timeout=30) as response:
                    body = json.load(response)
                op.outcome, op.value = body["outcome"], body["value"]
            except (OSError, ValueError, urllib.error.URLError, http.client.HTTPException) as error:
                op.outcome, op.value = INFO, repr(error)[:200]  # cut off: a killed worker
            op.ended = time.monotonic()
            with lock:
                history.append(op)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    target = Target(server=server, master=master, lease=lease, rng=random.Random(seed))
    nemesis(target, faults, seconds - 0.5, interval=max(0.3, seconds / 12))
    for thread in threads:
        thread.join(90)
    return sorted(history, key=lambda op: op.began), target
