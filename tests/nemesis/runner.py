"""Runs the workloads across processes or gunicorn workers while faults are injected.

A run: start the clients, let the nemesis inject one fault after another for
``seconds``, heal everything, read the final state with a fresh client and
hand the history, the state and what the runner knows (:class:`.checker.Run`)
to :mod:`.checker`.

The fault schedule (which fault when, and which victim by its rank among the
live ones) is drawn from the seed alone (:func:`schedule`), so a seed replays
the same schedule. Every fault records whether it took effect
(:class:`Effect`): a kill or pause with no victim, a ``CLIENT KILL`` that
closed nothing, memory pressure that evicted nothing, a reload that replaced
no worker all count as injected but not effective, and a case fails if a
fault it asked for never took effect.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

from ..clustertopology import NODE_TIMEOUT, ClusterTopology
from ..netfaults import BlackholeProxy
from ..redisserver import RedisServer, SentinelTopology
from .checker import ERASED, FAILOVER, PAUSE, RESTART, Client, Excuse, Run
from .history import FAIL, INFO, OK, Op, Recorder, attach_notes, load, load_computations
from .workloads import KINDS, arg_for, computations, open_cache, run_op

FORK = mp.get_context("fork")
#: Clients whose clock jumps start afresh (``spawn``), with libfaketime preloaded.
SPAWN = mp.get_context("spawn")
_ENVIRONMENT = threading.Lock()
#: How long a fault waits to see its effect (a death, a stop, new workers), in seconds.
SETTLE = 10.0


@dataclass(frozen=True)
class Effect:
    """One injection of a fault and what it did; ``effective`` only if it was seen to act."""

    fault: str
    at: float
    effective: bool
    detail: str


@dataclass(frozen=True)
class Step:
    """One step of the schedule: at ``offset`` s, ``fault``, on the victim of rank ``pick``."""

    offset: float
    fault: str
    pick: float  # in [0, 1): the victim is live[int(pick * len(live))]


@dataclass
class Started:
    """A client process the runner started."""

    proc: Any
    spelling: str
    began: float


@dataclass
class Target:
    """What the faults act on: the client processes, the server, gunicorn's master."""

    spawn: Callable[[], Any] | None = None  # start one more client process
    procs: list[Started] = field(default_factory=list)
    server: RedisServer | None = None
    #: A proxy some clients reach the server through (their spelling: ``behind_proxy``).
    proxy: BlackholeProxy | None = None
    behind_proxy: str = ""
    #: A master, replicas and sentinels: the faults fail the master over.
    topology: SentinelTopology | None = None
    #: A Redis Cluster, and the hash slots the workloads use (their keys', their lock's):
    #: the ``cluster_failover`` and ``migrate`` faults act on the masters serving them.
    cluster: ClusterTopology | None = None
    slots: tuple[int, ...] = ()
    #: A small file system the store lives on: the ``disk_full`` fault fills it.
    disk: Path | None = None
    #: The file the client processes' wall clock is offset by (libfaketime's
    #: ``FAKETIME_TIMESTAMP_FILE``): the ``clock_jump`` fault writes it.
    clock: Path | None = None
    clock_offset: int = 0
    clock_steps: list[float] = field(default_factory=list)  # (monotonic)
    master: int = 0  # gunicorn's master pid
    lease: float = 1.0
    done: list[str] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    #: What may excuse a holder told LeaseLost (see :class:`.checker.Excuse`).
    excuses: list[Excuse] = field(default_factory=list)
    #: pid -> the time SIGKILL was sent to it.
    kills: dict[int, float] = field(default_factory=dict)
    timers: list[threading.Timer] = field(default_factory=list)  # pending resumptions
    watchers: list[threading.Thread] = field(default_factory=list)  # effects still watched
    paused: set[int] = field(default_factory=set)
    #: Where the holders' notes are written as they happen (``<pid>.jsonl`` of client
    #: processes, ``notes-<pid>.jsonl`` of gunicorn workers): faults aim at a holder.
    notes: Path | None = None
    #: Pids killed, and pids stopped, while inside a section (grant noted, not the exit).
    killed_holders: list[int] = field(default_factory=list)
    paused_holders: list[int] = field(default_factory=list)
    #: Rate limits (``<strategy>:<number>``) whose key memory pressure evicted.
    evicted: set[str] = field(default_factory=set)
    #: (start, end) of each stop of a holder: while the others may have waited for its lock.
    holder_stops: list[tuple[float, float]] = field(default_factory=list)
    #: The spans of the stalls (:func:`stall`, :func:`cluster_stall`): each must hold a
    #: failover the watch heard or the logs tell of.
    stalls: list[tuple[float, float]] = field(default_factory=list)
    seed: int = 0
    ended: float = 0.0

    def victims(self) -> list[int]:
        """The client processes (workers) alive now: never one killed, even while its
        threads are still exiting (its main thread shows ``Z`` and ``is_alive()`` still
        says True until the last one is gone: a pause aimed there stops nothing)."""
        if self.master:
            pids = gunicorn_workers(self.master)
        else:
            pids = [started.proc.pid for started in self.procs if started.proc.is_alive()]
        return sorted(pid for pid in pids if pid not in self.kills and _state(pid) not in DEAD)

    def paused_for(self, pid: int, began: float, ended: float) -> float:
        """Seconds of [began, ended] that process ``pid`` may not have made progress: it was
        stopped or cut off, a lock holder it may have waited for was stopped, or the server
        was down or being failed over (overlapping windows counted once)."""
        own = [(e.start, e.end) for e in self.excuses if e.pid in (0, pid)]
        windows = sorted(
            (max(start, began), min(end, ended)) for start, end in [*own, *self.holder_stops]
        )
        total, reached = 0.0, began
        for start, end in windows:
            start = max(start, reached)
            if end > start:
                total += end - start
                reached = end
        return total

    def run_lease(self) -> float | None:
        """The lock's lease if it has one (Redis), else None (the kernel holds the lock)."""
        return self.lease if self.server or self.topology or self.cluster else None

    def run(self, kinds: tuple[str, ...], clients: list[Client], **options: Any) -> Run:
        """What the checker needs to know of this run; a lease only for Redis."""
        return Run(
            kinds=kinds,
            clients=tuple(clients),
            lease=self.run_lease(),
            excuses=tuple(self.excuses),
            deaths=dict(self.kills),
            evicted=frozenset(self.evicted),
            clock_steps=tuple(self.clock_steps),
            computations=(None if self.notes is None else tuple(load_computations(self.notes))),
            ended=self.ended,
            **options,
        )

    def missing(self, wanted: list[str]) -> list[str]:
        """A line for each wanted fault that never took effect (empty if all did)."""
        lines = []
        for name in wanted:
            tried = [e for e in self.effects if e.fault == name]
            if not any(e.effective for e in tried):
                said = "; ".join(sorted({e.detail for e in tried})) or "never injected"
                lines.append(f"fault {name!r}: {len(tried)} injected, none took effect ({said})")
        return lines

    def counts(self) -> dict[str, dict[str, int]]:
        """Per fault: how many were injected and how many took effect."""
        found: dict[str, dict[str, int]] = {}
        for e in self.effects:
            entry = found.setdefault(e.fault, {"injected": 0, "effective": 0})
            entry["injected"] += 1
            entry["effective"] += e.effective
        return found


def _pick(victims: list[int], pick: float) -> int:
    return victims[int(pick * len(victims))]


#: The states of a process that is gone or going (``''``: no longer in /proc).
DEAD: Final = ("", "Z", "X")


def _state(pid: int) -> str:
    """The process's state letter ('' if it is gone)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() or [""])[0]
    except (OSError, IndexError):
        return ""


def _halted(pid: int) -> bool:
    """Whether ``pid`` is stopped, or gone."""
    return _state(pid) in ("T", "t", *DEAD)


def _tail(path: Path) -> list[str]:
    """The whole lines of the last 16 KiB of ``path`` (none if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            return f.read().decode("utf-8", "replace").splitlines()[1:]
    except OSError:
        return []


def _open_grant(target: Target, pid: int) -> float | None:
    """When ``pid``'s latest section still open was granted (its notes show the grant and not
    the exit, read from their end); None if it holds none."""
    if target.notes is None:
        return None
    open_sections: dict[str, float] = {}
    for name in (f"{pid}.jsonl", f"notes-{pid}.jsonl"):
        for line in _tail(target.notes / name):
            if '"note"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            note = record.get("note") or {}
            if "left" in note:
                open_sections.pop(record.get("id"), None)
            elif "granted" in note:
                open_sections[record.get("id")] = float(note["granted"])
    return max(open_sections.values(), default=None)


def _granted_since(target: Target, since: float, other_than: int) -> bool:
    """Whether a process other than ``other_than`` noted a grant at ``since`` or later."""
    if target.notes is None:
        return False
    for path in target.notes.glob("*.jsonl"):
        if path.stem.removeprefix("notes-") == str(other_than):
            continue
        for line in reversed(_tail(path)):
            if '"granted"' not in line:
                continue
            try:
                granted = float(json.loads(line)["note"]["granted"])
            except (ValueError, KeyError, TypeError):
                continue
            if granted >= since:
                return True
            break  # (a process's grants are noted in order, nearly: the latest decides)
    return False


def _inside_section(target: Target, pid: int) -> bool:
    return _open_grant(target, pid) is not None


def _aim(target: Target, victims: list[int], pick: float, seconds: float = 1.5) -> int:
    """A victim inside a section it entered just now (not one stuck in it, waiting for a
    store that stopped answering) if one is seen within ``seconds``, else the picked one."""
    deadline = time.monotonic() + seconds
    while target.notes is not None and time.monotonic() < deadline:
        now = time.monotonic()
        holders = [
            pid
            for pid in victims
            if (granted := _open_grant(target, pid)) is not None and now - granted < 0.2
        ]
        if holders:
            return _pick(holders, pick)
        time.sleep(0.002)
    return _pick(victims, pick)


def _wait_for(condition: Callable[[], bool], seconds: float = SETTLE) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- faults: each returns (took effect, what it saw) ---------------------------------


def kill9(target: Target, pick: float) -> tuple[bool, str]:
    """SIGKILL a client process (a worker) wherever it is, a lock holder if one is seen; a
    new one takes its place. Never a paused one where locks have a lease (Redis): its pause
    is to end and its holder be told; where the kernel holds the lock, a stopped holder is
    the one everybody waits for."""
    victims = target.victims()
    if target.run_lease() is not None:
        victims = [pid for pid in victims if pid not in target.paused]
    if not victims:
        return False, "no live victim"
    victim = _aim(target, victims, pick)
    target.kills[victim] = time.monotonic()
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        return False, "the victim was already gone"
    if target.spawn is not None:
        target.procs.append(target.spawn())
    dead = _wait_for(lambda: _state(victim) in DEAD)
    inside = dead and _inside_section(target, victim)  # (its notes are final: it is dead)
    if inside:
        target.killed_holders.append(victim)
    where = " inside a section" if inside else ""
    return dead, f"pid {victim} {'died' if dead else 'still alive after SIGKILL'}{where}"


def pause(target: Target, pick: float) -> tuple[bool, str]:
    """SIGSTOP a client for longer than a lease (a GC or VM pause), then resume it.

    Where locks have a lease (Redis) the nemesis waits for the resumption (no
    other fault meanwhile), so that a stopped holder's exit meets a working
    store and is told ``LeaseLost``; elsewhere other faults go on meanwhile.
    """
    leased = target.run_lease() is not None
    tried: set[int] = set()
    for attempt in range(3 if leased else 1):
        victims = [pid for pid in target.victims() if pid not in target.paused | tried]
        if not victims:
            return False, "no live victim"
        # (with a lease, longer: a stop of a holder is what shows a holder told)
        victim = _aim(target, victims, pick, 4.0 if leased else 1.5)
        began = time.monotonic()
        target.paused.add(victim)
        try:
            os.kill(victim, signal.SIGSTOP)
        except ProcessLookupError:
            target.paused.discard(victim)
            return False, "the victim was already gone"
        stopped = _wait_for(functools.partial(_halted, victim), 2.0)
        stopped = stopped and _state(victim) in ("T", "t")
        inside = stopped and _inside_section(target, victim)  # (read once stopped: final)
        if inside or not leased or attempt == 2:
            break
        # With a lease, a pause is there to stop a holder past it: one that held nothing
        # is resumed at once (its short stop excused) and another is aimed at.
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
        target.excuses.append(Excuse(PAUSE, victim, began, time.monotonic()))
        target.paused.discard(victim)
        tried.add(victim)
    if inside:
        target.paused_holders.append(victim)

    def resume() -> None:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
        ended = time.monotonic()
        target.excuses.append(Excuse(PAUSE, victim, began, ended))
        if inside:  # the others may wait for its lock: a lease at most, if it has one
            waited = ended if target.run_lease() is None else began + target.lease
            target.holder_stops.append((began, min(ended, waited)))
        target.paused.discard(victim)

    where = " inside a section" if inside else ""
    seen = f"pid {victim} {'stopped' if stopped else 'not seen stopped'}{where}"
    if target.run_lease() is not None:
        time.sleep(target.lease * 2.5)
        if inside:  # stopped until another took the lock (they may all be busy elsewhere)
            _wait_for(lambda: _granted_since(target, began, victim), SETTLE)
        resume()
        if inside:  # its exit reaches the store (and it is told) before the next fault
            _wait_for(lambda: not _inside_section(target, victim), SETTLE)
        time.sleep(0.3)
        return stopped, seen
    timer = threading.Timer(target.lease * 2.5, resume)  # other faults go on meanwhile
    timer.start()
    target.timers.append(timer)
    return stopped, seen


def client_kill(target: Target, pick: float) -> tuple[bool, str]:
    """Drop every client connection to Redis (a proxy's idle kill, a blip, a failover)."""
    assert target.server is not None
    admin = redis.Redis(port=target.server.port)
    try:
        closed = int(admin.client_kill_filter(_type="normal", skipme=True))
    finally:
        admin.close()
    return closed > 0, f"{closed} connections closed"


def _run_id(port: int) -> str:
    admin = redis.Redis(port=port, socket_timeout=5)
    try:
        return str(admin.info("server")["run_id"])
    finally:
        admin.close()


def _bounce(
    target: Target, stop: Callable[[RedisServer], None], kept: bool, how: str
) -> tuple[bool, str]:
    """Stop the Redis server with ``stop`` and start it again, the downtime an excuse (its
    leases ``kept``, or erased); effective if its run id changed."""
    assert target.server is not None
    server = target.server
    before = _run_id(server.port)
    began = time.monotonic()
    stop(server)
    server.start()
    ended = time.monotonic()
    target.excuses.append(Excuse(RESTART if kept else ERASED, 0, began, ended))
    after = _run_id(server.port)
    return after != before, f"{how}run_id {before[:8]} -> {after[:8]}"


def _stop_gently(server: RedisServer) -> None:
    server.stop()
    time.sleep(0.2)


def restart(target: Target, pick: float) -> tuple[bool, str]:
    """Stop and start the Redis server (its data kept only if it persists)."""
    assert target.server is not None
    return _bounce(target, _stop_gently, target.server.durable, "")


def crash(target: Target, pick: float) -> tuple[bool, str]:
    """``kill -9`` the Redis server and start it again: it keeps what it had written to its
    append-only file (every write with ``appendfsync always``; ``everysec`` may lose the
    last second, leases included: an erasure)."""
    assert target.server is not None
    server = target.server
    always = server.durable and "everysec" not in server.extra
    return _bounce(target, RedisServer.kill, always, "SIGKILL; ")


def partition(target: Target, pick: float) -> tuple[bool, str]:
    """Drop every packet between the clients behind the proxy and Redis, for longer than a
    lease, then heal: a holder cut off is overtaken after its lease and told on leaving.

    To the clients cut off it is like a pause (they can neither renew nor
    release): each gets a :data:`.checker.PAUSE` excuse for the partition.
    """
    assert target.proxy is not None
    proxy = target.proxy
    before = proxy.swallowed
    began = time.monotonic()
    proxy.swallowing.set()
    time.sleep(target.lease * 1.5)
    proxy.swallowing.clear()
    ended = time.monotonic()
    for started in target.procs:
        if started.spelling == target.behind_proxy and started.proc.pid:
            target.excuses.append(Excuse(PAUSE, started.proc.pid, began, ended))
    dropped = proxy.swallowed - before
    return dropped > 0, f"{dropped:,} bytes dropped in {ended - began:.1f} s"


def _sentinel_fault(target: Target, kill: bool) -> tuple[bool, str]:
    """Fail the Sentinel topology's master over: ``kill -9`` (then start the old master
    again: the sentinels make it a replica) or a planned ``SENTINEL FAILOVER``; wait until
    every sentinel agrees on the new master with every replica linked.

    A lease granted on the old master while it is replaced may not reach the new one
    (and a plain ``cache.set`` there may be lost): the window from the fault to the
    settled topology is a :data:`.checker.FAILOVER` excuse.
    """
    topology = target.topology
    assert topology is not None
    old = topology.master_port()
    began = time.monotonic()
    if kill:
        killed = topology.server_on(old)
        killed.kill()
        new = topology.wait_renamed(old)
        if new:  # back as a replica of the new master (it persists nothing: empty as a master)
            plain = _without_replicaof(killed.extra)
            killed.extra = (*plain, "--replicaof", "127.0.0.1", str(new))
            killed.start()
        else:
            target.excuses.append(Excuse(FAILOVER, 0, began, time.monotonic()))
            return False, f"no sentinel named a new master after {old} was killed"
    else:
        sentinel: Any = redis.Redis(port=topology.sentinels[0].port, socket_timeout=5)
        deadline = time.monotonic() + 20
        try:
            while True:  # until the sentinels see a replica fit to promote (NOGOODSLAVE)
                began = time.monotonic()
                try:
                    sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.25)
        finally:
            sentinel.close()
        topology.wait_renamed(old)
    try:
        topology.wait_stable(40)
    except RuntimeError as error:
        return False, f"not settled: {error}"[:200]
    finally:
        target.excuses.append(Excuse(FAILOVER, 0, began, time.monotonic()))
    new = topology.master_port()
    return new != old, f"master {old} -> {new} in {time.monotonic() - began:.1f} s"


def _without_replicaof(extra: tuple[str, ...]) -> tuple[str, ...]:
    if "--replicaof" not in extra:
        return extra
    at = extra.index("--replicaof")
    return extra[:at] + extra[at + 3 :]


class SentinelWatch:
    """Every sentinel's events for the run, heard as they come (``PSUBSCRIBE *``): a master
    switch no fault ordered is a failover too. The sentinels judge a master down after
    ``down-after-milliseconds`` without an answer, which a loaded machine can cause: CI's
    newest leg promoted a second replica a second after the nemesis's failover had settled,
    and the replaced master took writes until it was made a replica ten seconds later.

    :meth:`windows` gives each master switch's span (:data:`.checker.FAILOVER` excuses).
    A sentinel that cannot be heard is noted in :attr:`deaf` (its switches missed: the run
    is judged more strictly, and the nemesis's own failovers are then not all heard).
    """

    #: The events of a master being failed over (those of replicas and sentinels aside).
    EVENTS: Final = (
        "+sdown", "+odown", "+try-failover", "+switch-master", "+convert-to-slave",
    )  # fmt: skip
    #: Seconds within which sentinels telling of one switch are one switch; and the longest
    #: a replaced master is looked for becoming a replica after it.
    SAME: Final = 10.0
    CONVERTED: Final = 30.0

    def __init__(self, topology: SentinelTopology) -> None:
        self.heard: list[tuple[float, str, str]] = []  # (monotonic time, event, its text)
        self.deaf: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._listen, args=(sentinel.port,), daemon=True)
            for sentinel in topology.sentinels
        ]
        self._lock = threading.Lock()
        self._subscribed = threading.Barrier(len(self._threads) + 1)
        for thread in self._threads:
            thread.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # (a deaf one: stricter)
            self._subscribed.wait(SETTLE)

    def _listen(self, port: int) -> None:
        client: Any = redis.Redis(port=port, socket_timeout=5)
        pubsub = client.pubsub()
        try:
            try:
                pubsub.psubscribe("*")
                pubsub.get_message(timeout=1.0)  # (the subscription's confirmation)
            finally:
                with contextlib.suppress(threading.BrokenBarrierError):
                    self._subscribed.wait(SETTLE)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if not message or message.get("type") != "pmessage":
                    continue
                event = message["channel"].decode()
                text = message["data"].decode()
                if event in self.EVENTS:
                    with self._lock:
                        self.heard.append((time.monotonic(), event, f"{port}: {text}"))
        except (OSError, redis.RedisError) as error:
            with self._lock:
                self.deaf.append(f"sentinel {port}: {error!r}"[:200])
        finally:
            pubsub.close()
            client.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def windows(self, down_after: float) -> list[tuple[float, float, float, str]]:
        """(start, end, when, what) of each master switch heard, once however many sentinels
        told of it: from ``down_after`` before the first sign its old master failed (an
        ``+sdown``, ``+odown`` or ``+try-failover`` naming it since the switch before) to a
        second after the old master was made a replica (``+convert-to-slave`` within
        :data:`CONVERTED` s), or after the switch. Each switch has a window of its own."""
        with self._lock:
            heard = sorted(self.heard)
        found: list[tuple[float, float, float, str]] = []
        told: dict[tuple[str, str], float] = {}
        previous = -math.inf
        for at, event, text in heard:
            if event != "+switch-master":
                continue
            words = text.split(": ", 1)[-1].split()  # mymaster <ip> <old> <ip> <new>
            old, new = words[2], words[4]
            if at - told.get((old, new), -math.inf) < self.SAME:
                continue  # another sentinel telling of the same switch
            told[(old, new)] = at
            signs = [
                when
                for when, kind, said in heard
                if kind in ("+sdown", "+odown", "+try-failover")
                and previous < when <= at
                and said.split(": ", 1)[-1].split()[:1] == ["master"]
                and said.split(": ", 1)[-1].split()[3:4] == [old]
            ]
            converted = [
                when
                for when, kind, said in heard
                if kind == "+convert-to-slave"
                and at <= when <= at + self.CONVERTED
                and said.split(": ", 1)[-1].split()[3:4] == [old]
            ]
            start = min([at, *signs]) - down_after
            found.append((start, (converted[0] if converted else at) + 1.0, at, text))
            previous = at
        return found


def failover(target: Target, pick: float) -> tuple[bool, str]:
    """``kill -9`` the Sentinel topology's master (see :func:`_sentinel_fault`)."""
    return _sentinel_fault(target, kill=True)


def switchover(target: Target, pick: float) -> tuple[bool, str]:
    """``SENTINEL FAILOVER``: a planned switch-over (see :func:`_sentinel_fault`)."""
    return _sentinel_fault(target, kill=False)


def stall(target: Target, pick: float) -> tuple[bool, str]:
    """``SIGSTOP`` the Sentinel topology's master until the sentinels have named another (a
    fork of a large dataset, a paused VM): the stalled master then resumes believing itself
    the master, its clients still connected, until the sentinels turn it into a replica.

    The nemesis excuses nothing of it: the window is the one the sentinels' own events
    give (:class:`SentinelWatch`), as for a failover they make on their own, so a run with
    a stall shows the watch at work (an ``unplanned failover`` effect)."""
    topology = target.topology
    assert topology is not None
    old = topology.master_port()
    process = topology.server_on(old).process
    assert process is not None
    began = time.monotonic()
    os.kill(process.pid, signal.SIGSTOP)
    try:
        new = topology.wait_renamed(old)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    stopped = time.monotonic() - began
    if not new:
        return False, f"no sentinel named a new master while {old} was stopped {stopped:.1f} s"
    try:
        topology.wait_stable(40)
    except RuntimeError as error:
        return False, f"not settled: {error}"[:200]
    finally:
        target.stalls.append((began, time.monotonic()))
    return True, f"master {old} stopped {stopped:.1f} s -> {new}"


def cluster_failover(target: Target, pick: float) -> tuple[bool, str]:
    """``kill -9`` the Cluster master serving one of the workloads' slots (by ``pick``); its
    replica is promoted; the killed node is started again, as a supervisor would, and rejoins
    as the new master's replica. The window from the kill to a stable cluster is a
    :data:`.checker.FAILOVER` excuse (a lease granted on the old master may not reach the
    new one before the kill: its holder is told)."""
    cluster = target.cluster
    assert cluster is not None
    slot = _pick(list(target.slots), pick)
    victim = cluster.master_of_slot(slot)
    began = time.monotonic()
    victim.kill()
    try:
        try:
            promoted = cluster.wait_promoted_slot(slot, victim, wait=30)
        finally:
            victim.start()
        cluster.wait_stable(40)
    except RuntimeError as error:
        return False, f"not settled: {error}"[:200]
    finally:
        target.excuses.append(Excuse(FAILOVER, 0, began, time.monotonic()))
    took = time.monotonic() - began
    return True, f"slot {slot}: master {victim.port} -> {promoted.port} in {took:.1f} s"


def cluster_stall(target: Target, pick: float) -> tuple[bool, str]:
    """``SIGSTOP`` the Cluster master serving one of the workloads' slots (by ``pick``) until
    its replica has taken the slot over: the stalled master then resumes believing itself
    the slot's master until the cluster's gossip tells it otherwise.

    The nemesis excuses nothing of it: the window is the one the nodes' own logs give
    (:func:`_excuse_elections`), as for a failover the cluster makes on its own."""
    cluster = target.cluster
    assert cluster is not None
    slot = _pick(list(target.slots), pick)
    victim = cluster.master_of_slot(slot)
    assert victim.process is not None
    began = time.monotonic()
    os.kill(victim.process.pid, signal.SIGSTOP)
    promoted = None
    try:
        while promoted is None and time.monotonic() < began + 30:
            with contextlib.suppress(AssertionError, OSError, redis.RedisError):
                promoted = cluster.master_of_slot(slot, excluding=victim)
            time.sleep(0.1)
    finally:
        os.kill(victim.process.pid, signal.SIGCONT)
    stopped = time.monotonic() - began
    if promoted is None:
        return False, f"no replica took over slot {slot} in {stopped:.1f} s"
    try:
        cluster.wait_stable(40)
    except RuntimeError as error:
        return False, f"not settled: {error}"[:200]
    finally:
        target.stalls.append((began, time.monotonic()))
    return True, f"slot {slot}: master {victim.port} stopped {stopped:.1f} s -> {promoted.port}"


def migrate(target: Target, pick: float) -> tuple[bool, str]:
    """Move every slot the workloads use to another master, a key at a time, as ``redis-cli
    --cluster reshard`` does: operations meanwhile meet ``ASK`` and ``MOVED``. Nothing is
    excused: each operation completes exactly or raises with nothing written."""
    cluster = target.cluster
    assert cluster is not None
    moves, moved = [], True
    for slot in sorted(set(target.slots)):
        try:
            source, dest = cluster.migrate(slot, pause=0.05)
        except redis.RedisError as error:  # (reported: a migration that failed took no effect)
            return False, f"slot {slot}: {type(error).__name__}: {error}"[:200]
        moved = moved and cluster.master_of_slot(slot) is dest
        moves.append(f"slot {slot}: {source.port} -> {dest.port}")
    return moved and bool(moves), "; ".join(moves)


def disk_full(target: Target, pick: float) -> tuple[bool, str]:
    """Fill the small disk the store is on with a file of junk until the kernel refuses a
    byte more (``ENOSPC``), keep it full until a client has been refused a write (a second
    at least, ``SETTLE`` s at most: clients may all be waiting for a paused holder), then
    delete the junk: writes meanwhile fail with nothing written (``WriteError``), and
    service resumes after. Effective if the disk was full and a write was refused."""
    assert target.disk is not None and target.notes is not None
    junk = target.disk / f"junk-{time.monotonic_ns()}"
    written, full, refused = 0, False, False
    chunk = b"\0" * 65536
    seen = {path: path.stat().st_size for path in target.notes.glob("*.jsonl")}
    descriptor = os.open(junk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while not full:
            try:
                written += os.write(descriptor, chunk)  # (short once nearly full)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                full = True
        time.sleep(0.5 + 0.5 * pick)
        refused = _wait_for(lambda: _refused_since(target.notes, seen), SETTLE)
    finally:
        os.close(descriptor)
        junk.unlink()
    said = "refused a write" if refused else "no write refused"
    return full and refused, f"{written:,} bytes of junk until ENOSPC: {said}"


def _refused_since(folder: Path | None, seen: dict[Path, int]) -> bool:
    """Whether a client recorded a write refused for want of space since ``seen`` (sizes)."""
    assert folder is not None
    for path in folder.glob("*.jsonl"):
        try:
            with open(path, "rb") as f:
                f.seek(seen.get(path, 0))
                if b"WriteError" in f.read():
                    return True
        except OSError:
            continue
    return False


#: The steps of the clients' wall clock the ``clock_jump`` fault makes, in seconds: NTP's
#: small steps, a minute and more, an hour (a time zone mistaken for UTC).
JUMPS: Final = (-3600, -90, -5, 5, 90, 3600)
#: The furthest the clients' clock is taken from the real one; a step beyond turns back.
MAX_OFFSET: Final = 7200


def clock_jump(target: Target, pick: float) -> tuple[bool, str]:
    """Step the wall clock of every client process at once, as a host's clock steps: the
    offset file libfaketime reads at every call (:func:`faketime_environment`) replaced
    in one rename; their monotonic clock is left alone. Effective once a client recorded
    an operation begun on the new clock (its ``wall`` less its ``began``)."""
    assert target.clock is not None and target.notes is not None
    step = JUMPS[int(pick * len(JUMPS))]
    if abs(target.clock_offset + step) > MAX_OFFSET:
        step = -step
    offset = target.clock_offset + step
    seen = {path: path.stat().st_size for path in target.notes.glob("*.jsonl")}
    target.clock_steps.append(time.monotonic())  # (just before: a client may step at once)
    set_clock_offset(target.clock, offset)
    target.clock_offset = offset
    base = time.time() - time.monotonic()  # (this process's clock is the real one)
    struck = _wait_for(lambda: _clock_seen(target.notes, seen, base + offset), SETTLE)
    said = "a client began an operation on it" if struck else "no client was seen on it"
    return struck, f"the clients' clock stepped {step:+d} s, to {offset:+d} s: {said}"


def set_clock_offset(path: Path, offset: int) -> None:
    """Make ``offset`` seconds libfaketime's offset in ``path``, in one rename."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(f"{offset:+d}s\n")
    os.replace(fresh, path)


def _clock_seen(folder: Path | None, seen: dict[Path, int], base: float) -> bool:
    """Whether a client's operation recorded since ``seen`` began with ``wall`` - ``began``
    within half a second of ``base`` (the real clock's, offset by the jump)."""
    assert folder is not None
    for path in folder.glob("*.jsonl"):
        try:
            with open(path, "rb") as f:
                f.seek(seen.get(path, 0))
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "wall" in record and abs(record["wall"] - record["began"] - base) < 0.5:
                return True
    return False


def faketime_library() -> str | None:
    """The libfaketime shared library the ``libfaketime`` wheel ships, if it is installed."""
    try:
        import libfaketime  # type: ignore[import-untyped]
    except ImportError:
        return None
    found = Path(libfaketime.__file__).parent / "vendor/libfaketime/src/libfaketime.so.1"
    return str(found) if found.exists() else None


def faketime_environment(clock: Path) -> dict[str, str]:
    """What a client process's environment needs to read its wall clock offset by ``clock``.

    ``FAKETIME_NO_CACHE``: the file is read at every call, so every process steps at
    once; ``FAKETIME_DONT_FAKE_MONOTONIC``: the monotonic clock is the real one, as a
    step of the system clock leaves it. (Debian's libfaketime 0.9.10 makes
    ``time.sleep`` fail with ``EINVAL`` so; the wheel's does not.)
    """
    library = faketime_library()
    assert library is not None
    return {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def memory_pressure(target: Target, pick: float) -> tuple[bool, str]:
    """Fill Redis with keys that have a TTL until it has evicted 100 of them (10 s at most),
    then delete that junk (so evictions stop with the fault).

    Every key evicted meanwhile is heard of (keyspace notifications, ``evicted``): a rate
    limit's window among them may let its count through again (``Target.evicted``).
    """
    assert target.server is not None
    admin = redis.Redis(port=target.server.port, socket_timeout=5)
    admin.config_set("notify-keyspace-events", "Ee")
    heard = admin.pubsub()
    heard.subscribe("__keyevent@0__:evicted")
    junk_keys: list[str] = []
    try:
        start = int(admin.info("stats")["evicted_keys"])
        junk = b"j" * 20000
        evicted = written = 0
        deadline = time.monotonic() + SETTLE
        while evicted < 100 and time.monotonic() < deadline:
            for _ in range(50):
                junk_keys.append(f"junk:{os.getpid()}:{time.monotonic_ns()}:{written}")
                admin.set(junk_keys[-1], junk, ex=600)
                written += 1
            evicted = int(admin.info("stats")["evicted_keys"]) - start
        for at in range(0, len(junk_keys), 500):
            admin.delete(*junk_keys[at : at + 500])
        names = _evicted_limits(heard)
    finally:
        heard.close()
        admin.close()
    target.evicted |= names
    detail = f"{evicted} keys evicted after {written} written ({len(names)} rate limits)"
    return evicted > 0, detail


def _evicted_limits(heard: Any) -> set[str]:
    """The rate limits (``<strategy>:<number>``, see :func:`.workloads.arg_for`) whose keys
    the notifications heard so far say were evicted."""
    found = set()
    while (message := heard.get_message(timeout=0.3)) is not None:
        if message["type"] != "message":
            continue  # (the subscription's confirmation)
        key = message["data"].decode() if isinstance(message["data"], bytes) else ""
        match = re.search(r"nemesis(\d+)/.*#(fixed|moving|sliding)$", key)
        if match:
            found.add(f"{match.group(2)}:{match.group(1)}")
    return found


def reload_workers(target: Target, pick: float) -> tuple[bool, str] | None:
    """SIGHUP gunicorn's master: new workers, the old ones finish what they serve and go.

    Effective once every worker of before the HUP is gone and new ones serve
    (watched for ``SETTLE`` s by a thread, so that the faults after it keep
    their times: an old worker may finish a request that waits for a lock).
    """
    before = set(gunicorn_workers(target.master))
    at = time.monotonic()
    os.kill(target.master, signal.SIGHUP)

    def replaced() -> bool:
        now = set(gunicorn_workers(target.master))
        return bool(now) and not now & before

    def watch() -> None:
        done = _wait_for(replaced)
        now = set(gunicorn_workers(target.master))
        detail = f"workers {sorted(before)} -> {sorted(now)}"
        target.effects.append(Effect("reload", at, done, detail))

    watcher = threading.Thread(target=watch)
    watcher.start()
    target.watchers.append(watcher)
    return None  # recorded by the watcher


#: Each fault returns whether it took effect and what it saw, or None if a thread of its
#: own records that later (in ``target.watchers``).
FAULTS: dict[str, Callable[[Target, float], tuple[bool, str] | None]] = {
    "kill9": kill9,
    "pause": pause,
    "client_kill": client_kill,
    "restart": restart,
    "crash": crash,
    "partition": partition,
    "failover": failover,
    "switchover": switchover,
    "stall": stall,
    "cluster_failover": cluster_failover,
    "cluster_stall": cluster_stall,
    "migrate": migrate,
    "memory": memory_pressure,
    "disk_full": disk_full,
    "clock_jump": clock_jump,
    "reload": reload_workers,
}


#: Seconds of a run per fault it injects, at the least: each fault strikes at least once
#: (a restart or memory pressure waits seconds for its effect, delaying the next; a
#: failover waits for the sentinels to agree and the replicas to resync).
PER_FAULT: Final = 2.5
SLOW_FAULTS: Final = {
    "partition": 4.0,
    "failover": 8.0,
    "switchover": 13.0,
    "stall": 16.0,  # (the stalled master is made a replica about 10 s after the switch)
    "cluster_failover": 8.0,
    "cluster_stall": 8.0,
    "migrate": 4.0,
}


def long_enough(seconds: float, faults: list[str], lease: float | None = None) -> float:
    """``seconds``, or longer if the run needs it for every fault to strike at least once
    (with a lease, a pause holds the schedule until its victim resumes)."""
    slow = dict(SLOW_FAULTS)
    if lease is not None:
        slow["pause"] = lease * 2.5 + 4.0  # and until another took the lock
    return max(seconds, sum(slow.get(fault, PER_FAULT) for fault in faults) + 1.0)


#: The longest interval between two faults: a long run (``make nemesis``) injects more of
#: them, not the same dozen spread thinner.
MAX_INTERVAL: Final = 2.5


def fault_interval(seconds: float) -> float:
    """Seconds between two faults: a twelfth of a short run, at most ``MAX_INTERVAL``."""
    return max(0.3, min(seconds / 12, MAX_INTERVAL))


def schedule(seed: int, faults: list[str], seconds: float, interval: float) -> list[Step]:
    """The faults in turn (in an order shuffled by ``seed``), one every ``interval`` s."""
    rng = random.Random(seed)
    order = list(faults)
    rng.shuffle(order)
    steps: list[Step] = []
    offset = interval
    while offset < seconds:
        steps.append(Step(offset, order[len(steps) % len(order)], rng.random()))
        offset += interval
    return steps


#: Seconds a run may go on past its length so that every fault asked for is injected at
#: least once: slow faults can use up a short run's schedule (CI's newest leg: a switch-over
#: of 11.2 s and a failover of 14.5 s left no time for the pause).
OVERTIME: Final = 60.0
#: Kills in overtime, at most, until one lands inside a section.
KILL_RETRIES: Final = 3
#: The longest a fault may take (a failover waits up to 30 s for a new master, then 40 s
#: for the topology to settle): the clients' backstop lies this far past the overtime.
LONGEST_FAULT: Final = 80.0


def nemesis(target: Target, faults: list[str], seconds: float, interval: float) -> None:
    """Inject the scheduled faults until ``seconds`` have passed; record what each did. The
    clients must run until it returns (up to :data:`OVERTIME` seconds more).

    A fault that takes long (waiting for its effect) delays the steps after
    it; none is skipped before ``seconds``. A fault asked for that the
    schedule never reached is then injected once, in overtime.
    """
    start = time.monotonic()
    stop_at = start + seconds

    def inject(fault: str, pick: float) -> None:
        at = time.monotonic()
        seen = FAULTS[fault](target, pick)
        if seen is not None:
            target.effects.append(Effect(fault, at, *seen))
        target.done.append(fault)

    for step in schedule(target.seed, faults, seconds, interval):
        time.sleep(max(0.0, start + step.offset - time.monotonic()))
        if time.monotonic() >= stop_at:
            break
        inject(step.fault, step.pick)
    rng = random.Random(target.seed)
    for fault in faults:
        if fault not in target.done and time.monotonic() < stop_at + OVERTIME:
            time.sleep(interval)  # (the clients work between two faults, as scheduled)
            inject(fault, rng.random())
    # A kill -9 must land inside a section at least once (the case checks it): a run whose
    # few kills found no holder (CI: one kill in a Sentinel run of stalls) kills again.
    for _ in range(KILL_RETRIES):
        inside = any(e.fault == "kill9" and "inside" in e.detail for e in target.effects)
        if "kill9" not in faults or inside or time.monotonic() >= stop_at + OVERTIME:
            break
        time.sleep(interval)
        inject("kill9", rng.random())
    for timer in target.timers:  # every paused process resumed before the run ends
        timer.join()
    for watcher in target.watchers:
        watcher.join()


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


def client_process(
    spec: str,
    folder: str,
    until: float,
    seed: int,
    kinds: tuple[str, ...],
    defaults: Any = None,
) -> None:
    """A client process: opens the store (recorded as ``open``), then two threads of random
    operations until the runner creates ``<folder>/stop`` (or ``until`` at the latest). A
    failure to open is recorded and exits with code 1. ``defaults``: the parent's cachekit
    settings, for a process started afresh."""
    if defaults is not None:
        import cachekit.settings

        cachekit.settings.DEFAULTS = defaults
    recorder = Recorder(Path(folder))
    nonce = recorder.nonce
    computations.folder = folder  # (the memoized function notes its computations there)
    with recorder.op("open", spec) as opening:
        try:
            cache = open_cache(spec)
        except Exception as error:
            opening.outcome, opening.value = FAIL, f"{type(error).__name__}: {error}"[:300]
            raise
        opening.outcome = OK

    stop = Path(folder) / STOP

    def loop(thread: int) -> None:
        rng = random.Random(seed * 10 + thread)
        n = 0
        while time.monotonic() < until and not stop.exists():
            n += 1
            kind = rng.choice(kinds)
            tag = f"{os.getpid()}.{nonce}.{thread}.{n}"
            arg = arg_for(kind, tag, rng)
            with recorder.op(kind, arg) as pending:
                pending.outcome, pending.value = run_op(cache, kind, arg, rng, pending.note)

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
    proxy: BlackholeProxy | None = None,
    behind_proxy: str = "",
    topology: SentinelTopology | None = None,
    cluster: ClusterTopology | None = None,
    slots: tuple[int, ...] = (),
    disk: Path | None = None,
    clock: Path | None = None,
    lease: float = 1.0,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
) -> tuple[list[Op], Target, list[Client]]:
    """Client processes (one per spec, spelled as given) under the faults; their history.

    ``proxy``: the clients whose spec is ``behind_proxy`` reach Redis through it
    (the ``partition`` fault cuts them off). ``topology``: a Sentinel topology
    the ``failover`` and ``switchover`` faults act on; ``cluster``: a Redis Cluster the
    ``cluster_failover`` and ``migrate`` faults act on, at the masters of ``slots``;
    ``disk``: the small file system the ``disk_full`` fault fills; ``clock``: the
    offset file of the clients' wall clock, which the ``clock_jump`` fault writes
    (clients are then started afresh, with libfaketime preloaded).
    """
    folder.mkdir(parents=True, exist_ok=True)
    seconds = long_enough(seconds, faults, lease if server or topology or cluster else None)
    planned = time.monotonic() + seconds + (STARTUP if clock else 0.0)
    until = planned + OVERTIME + LONGEST_FAULT  # (they stop when told: this is a backstop)
    (folder / STOP).unlink(missing_ok=True)
    count = iter(range(10**6))

    def spawn() -> Started:
        n = next(count)
        spec = specs[n % len(specs)]
        args = (spec, str(folder), until, seed * 1000 + n, kinds)
        if clock is None:
            proc = FORK.Process(target=client_process, args=args)
            began = time.monotonic()
            proc.start()
            return Started(proc, spec, began)
        import cachekit.settings

        fresh = SPAWN.Process(target=client_process, args=(*args, cachekit.settings.DEFAULTS))
        began = time.monotonic()
        with _ENVIRONMENT, _environment(faketime_environment(clock)):
            fresh.start()
        return Started(fresh, spec, began)

    if clock is not None:
        set_clock_offset(clock, 0)

    target = Target(
        spawn=spawn,
        server=server,
        proxy=proxy,
        behind_proxy=behind_proxy,
        topology=topology,
        cluster=cluster,
        slots=slots,
        disk=disk,
        clock=clock,
        lease=lease,
        seed=seed,
        notes=folder,
    )
    target.procs = [spawn() for _ in specs]
    if clock is not None:  # started afresh: no fault while they import (a second of CPU each)
        _wait_until_open(folder, len(specs))
    watch = SentinelWatch(topology) if topology is not None else None
    faults_from = time.monotonic()
    left = planned - 0.5 - time.monotonic()
    try:
        nemesis(target, faults, left, interval=fault_interval(seconds))
    finally:
        (folder / STOP).touch()
        until = time.monotonic()
        if watch is not None:
            watch.stop()
    if watch is not None and topology is not None:
        _excuse_switches(target, watch, topology.down_after / 1000)
    if cluster is not None:
        _excuse_elections(target, cluster, faults_from)
    clients = []
    for started in target.procs:  # (all joined first: the history is read once they are done)
        proc = started.proc
        if proc.is_alive() and proc.pid:
            os.kill(proc.pid, signal.SIGCONT)
        proc.join(60)
        if proc.is_alive():  # hung: killed here, and its exit code says so
            proc.kill()
            proc.join(5)
    history = load(folder)
    # A client's life begins when it opened its store: a process started afresh (spawn)
    # spends its first second importing.
    opened = {op.client: op.began for op in history if op.kind == "open"}
    for started in target.procs:
        proc = started.proc
        ended = min(target.kills.get(proc.pid, until), until)
        began = max(started.began, opened.get(str(proc.pid), started.began))
        clients.append(
            Client(
                str(proc.pid),
                started.spelling,
                began,
                ended,
                paused=target.paused_for(proc.pid, began, ended),
                exitcode=proc.exitcode,
                killed=proc.pid in target.kills,
            )
        )
    target.ended = time.monotonic()
    return history, target, clients


def _excuse_switches(target: Target, watch: SentinelWatch, down_after: float) -> None:
    """Every master switch the sentinels made is a failover excuse (its own window: see
    :meth:`SentinelWatch.windows`); one heard outside every failover window of the
    nemesis's own faults is also an effect of its own, ``unplanned failover``, so that the
    run's summary shows it. The watch itself is an effect, ``heard switches``, effective
    if it heard a switch in each of the nemesis's failovers and in each stall."""
    planned = [(e.start, e.end + 1.0) for e in target.excuses if e.kind == FAILOVER]
    windows = watch.windows(down_after)
    _heard(target, "heard switches", [*planned, *target.stalls], [w[2] for w in windows])
    for start, end, at, what in windows:
        target.excuses.append(Excuse(FAILOVER, 0, start, end))
        if not any(s <= at <= e for s, e in planned):
            target.effects.append(Effect("unplanned failover", at, True, what))
    for deaf in watch.deaf:
        target.effects.append(Effect("heard switches", time.monotonic(), False, deaf))


def _heard(target: Target, name: str, spans: list[tuple[float, float]], at: list[float]) -> None:
    """An effect ``name``: effective if each of ``spans`` (the nemesis's failovers and
    stalls) holds one of the switches or elections heard ``at``."""
    heard = [span for span in spans if any(span[0] <= when <= span[1] for when in at)]
    target.effects.append(
        Effect(
            name,
            time.monotonic(),
            bool(spans) and len(heard) == len(spans),
            f"{len(heard)} of the {len(spans)} failovers and stalls of the nemesis heard",
        )
    )


#: A Redis log line: the server's wall clock (local, to the millisecond), and what it says.
LOG_LINE: Final = re.compile(r"^\d+:[A-Z] (\d\d \w{3} \d{4} \d\d:\d\d:\d\d)\.(\d{3}) [*#.-] (.*)$")


def log_events(path: Path, since: float) -> list[tuple[float, str]]:
    """The lines of Redis log ``path`` from ``since`` on, as (monotonic time, text)."""
    offset = time.time() - time.monotonic()
    found = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            matched = LOG_LINE.match(line)
            if matched:
                wall = time.mktime(time.strptime(matched[1], "%d %b %Y %H:%M:%S"))
                at = wall + int(matched[2]) / 1000 - offset
                if at >= since:
                    found.append((at, matched[3]))
    return found


def _excuse_elections(target: Target, cluster: ClusterTopology, since: float) -> None:
    """Every failover the Cluster made, as its nodes' logs tell it ("Failover election won"),
    is a failover excuse of its own: from ``cluster-node-timeout`` and half a second before
    the last node marked failing in the 5 s before (the master may not have answered
    since) to 2 s after the election (a stopped master, resumed, learns it lost its slots).
    One outside the nemesis's own failover windows is shown as an ``unplanned failover``
    effect (a loaded node may miss the node timeout); the reading itself is an effect,
    ``heard elections``, effective if it found an election in each of the nemesis's
    failovers and stalls. (An election in a shard the workloads do not use counts too.)"""
    elections, marks = [], []
    for node in cluster.nodes:
        for at, text in log_events(node.directory / f"server-{node.port}.log", since):
            if text.startswith("Failover election won"):
                elections.append((at, node.port))
            elif text.startswith("Marking node"):
                marks.append(at)
    planned = [(e.start, e.end + 1.0) for e in target.excuses if e.kind == FAILOVER]
    _heard(target, "heard elections", [*planned, *target.stalls], [at for at, _ in elections])
    timeout = NODE_TIMEOUT / 1000
    for won, port in sorted(elections):
        marked = max([at for at in marks if won - 5.0 <= at <= won], default=won)
        target.excuses.append(Excuse(FAILOVER, 0, marked - timeout - 0.5, won + 2.0))
        if not any(s <= won <= e for s, e in planned):
            target.effects.append(
                Effect("unplanned failover", won, True, f"node {port} won an election")
            )


#: The file whose creation ends a run's client processes (in the history folder).
STOP: Final = "stop"

#: Seconds a run of clients started afresh is made longer by: they import for about a
#: second of CPU each before they open their store, and no fault strikes until they have.
STARTUP: Final = 5.0


def _wait_until_open(folder: Path, clients: int) -> None:
    """Wait until ``clients`` processes recorded their store opened (``SETTLE`` s at most)."""
    _wait_for(lambda: sum(op.kind == "open" and op.ended > 0 for op in load(folder)) >= clients)


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Any:
    """``os.environ`` with ``changes`` inside the block (a spawned process inherits it)."""
    before = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- clients: HTTP against gunicorn ------------------------------------------------


def run_http(
    base: str,
    master: int,
    seconds: float,
    faults: list[str],
    *,
    spelling: str,
    notes: Path,
    server: RedisServer | None = None,
    lease: float = 1.0,
    clients: int = 16,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    max_requests: int = 0,
) -> tuple[list[Op], Target, list[Client]]:
    """HTTP clients against gunicorn workers, under the faults; the history they saw.

    ``notes`` is the folder the workers write their holders' notes to
    (``NEMESIS_NOTES``). With ``max_requests`` (gunicorn's ``--max-requests``)
    the run also records a ``recycle`` effect: a worker that answered at least
    that many requests and was gone at the end, neither killed nor reloaded.
    """
    seconds = long_enough(seconds, faults, lease if server else None)
    until = time.monotonic() + seconds + OVERTIME + LONGEST_FAULT  # (a backstop: stop is told)
    stop = threading.Event()
    history: list[Op] = []
    served: Counter[int] = Counter()
    lock = threading.Lock()
    ran: list[Client] = []

    def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        began = time.monotonic()
        n = 0
        while time.monotonic() < until and not stop.is_set():
            n += 1
            kind = rng.choice(kinds)
            arg = arg_for(kind, f"c{i}.{n}", rng)
            op = Op(f"c{i}-{n}", kind, arg, began=time.monotonic(), client=f"c{i}")
            try:
                url = f"{base}/op/{kind}?arg={arg or ''}&id={op.id}"
                with urllib.request.urlopen(url, timeout=30) as response:
                    body = json.load(response)
                op.outcome, op.value = body["outcome"], body["value"]
                with lock:
                    served[int(body["pid"])] += 1
            except (OSError, ValueError, urllib.error.URLError, http.client.HTTPException) as error:
                op.outcome, op.value = INFO, repr(error)[:200]  # cut off: a killed worker
            op.ended = time.monotonic()
            with lock:
                history.append(op)
        with lock:
            ran.append(Client(f"c{i}", spelling, began, time.monotonic(), exitcode=None))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    target = Target(server=server, master=master, lease=lease, seed=seed, notes=notes)
    nemesis(target, faults, seconds - 0.5, interval=fault_interval(seconds))
    stop.set()
    for thread in threads:
        thread.join(90)
    target.ended = time.monotonic()
    if max_requests:
        alive = set(gunicorn_workers(master))
        reloaded = any(e.fault == "reload" and e.effective for e in target.effects)
        retired = [
            pid
            for pid, count in served.items()
            if count >= max_requests and pid not in alive and pid not in target.kills
        ]
        target.effects.append(
            Effect(
                "recycle",
                target.ended,
                bool(retired),
                f"{len(retired)} workers retired after {max_requests}+ requests"
                f" (most served: {max(served.values(), default=0)}; reloads: {reloaded})",
            )
        )
    attach_notes(history, notes)
    return sorted(history, key=lambda op: op.began), target, ran
