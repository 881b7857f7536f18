"""Workloads and their checks for failovers of a replicated Redis (tests only).

Client processes write every outcome to a file of their own, a line each, the
moment they know it (a process killed or cut off leaves whole lines):

- ``ok <time> <value>``: an acknowledged ``incr`` of key ``n``;
- ``sec <granted> <left> <token> <told>``: a section of ``lock("L")``, held
  10 ms, ``told`` 1 when leaving raised ``LeaseLost``;
- ``txn <time> ok|unknown``: a transfer of 1 from ``a`` to ``b`` in one
  ``transaction``, acknowledged or ended by a cachekit error (which may or may
  not have been applied only when it says so);
- ``err <time> <name> <message>``: a cachekit error; ``bad ...``: any other
  error, which the checks refuse.

:func:`check` reads them all and lists every anomaly: an untold overlap of
lock holders, a fencing token that did not grow in the order of grants, an
increment value handed out twice or lost, money not conserved or an
acknowledged transfer lost, a pause in service longer than allowed, and too
little progress before or after the fault (a history that proves nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cachekit
from cachekit.errors import CachekitError, LeaseLost


def open_cache(kind: str, where: Any, prefix: str) -> Any:
    """A Flask-Caching backend of ``kind`` ("sentinel": sentinel addresses; "cluster": nodes)."""
    from flask_caching.backends import RedisClusterCache, RedisSentinelCache

    if kind == "sentinel":
        return RedisSentinelCache(sentinels=where, master="mymaster", key_prefix=prefix)
    return RedisClusterCache(cluster=where, key_prefix=prefix)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _failed(log: Any, error: BaseException) -> None:
    kind = "err" if isinstance(error, CachekitError) else "bad"
    log.write(f"{kind} {time.time():.6f} {type(error).__name__} {_one_line(error)}\n")
    time.sleep(0.01)


def count(kind: str, where: Any, prefix: str, until: float, out: str) -> None:
    """``incr`` key "n" until ``until``."""
    cache = open_cache(kind, where, prefix)
    with open(out, "w", buffering=1) as log:
        while time.time() < until:
            try:
                value = cachekit.incr(cache, "n")
            except Exception as error:
                _failed(log, error)
                continue
            log.write(f"ok {time.time():.6f} {value}\n")
            time.sleep(0.002)


def take_turns(kind: str, where: Any, prefix: str, until: float, out: str) -> None:
    """Hold lock "L" for 10 ms at a time until ``until``."""
    cache = open_cache(kind, where, prefix)
    with open(out, "w", buffering=1) as log:
        while time.time() < until:
            granted = left = 0.0
            token = 0
            try:
                with cachekit.lock(cache, "L") as handle:
                    granted = time.time()
                    token = handle.token
                    time.sleep(0.01)
                    left = time.time()
            except LeaseLost:
                log.write(f"sec {granted:.6f} {left:.6f} {token} 1\n")
                continue
            except Exception as error:
                _failed(log, error)
                continue
            log.write(f"sec {granted:.6f} {left:.6f} {token} 0\n")
            time.sleep(0.002)


def transfer(kind: str, where: Any, prefix: str, until: float, out: str) -> None:
    """Move 1 from "a" to "b" in one transaction, until ``until``."""
    cache = open_cache(kind, where, prefix)
    with open(out, "w", buffering=1) as log:
        while time.time() < until:
            try:
                with cachekit.transaction(cache, "a", "b") as txn:
                    txn["a"] = txn.get("a", 0) - 1
                    txn["b"] = txn.get("b", 0) + 1
            except CachekitError as error:
                unknown = "may or may not" in str(error)
                log.write(f"txn {time.time():.6f} {'unknown' if unknown else 'failed'}\n")
                _failed(log, error)
                continue
            except Exception as error:
                _failed(log, error)
                continue
            log.write(f"txn {time.time():.6f} ok\n")
            time.sleep(0.002)


@dataclass(frozen=True)
class Section:
    granted: float
    left: float
    token: int
    told: bool
    holder: int


@dataclass
class History:
    sections: list[Section] = field(default_factory=list)
    increments: list[tuple[float, int]] = field(default_factory=list)
    transfers: list[tuple[float, str]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)


def read(files: list[Path]) -> History:
    history = History()
    for holder, path in enumerate(files):
        for line in path.read_text().splitlines():
            kind, rest = line.split(" ", 1)
            if kind == "sec":
                granted, left, token, told = rest.split()
                history.sections.append(
                    Section(float(granted), float(left), int(token), told == "1", holder)
                )
            elif kind == "ok":
                at, value = rest.split()
                history.increments.append((float(at), int(value)))
            elif kind == "txn":
                at, outcome = rest.split()
                history.transfers.append((float(at), outcome))
            elif kind == "err":
                name = rest.split()[1]
                history.errors[name] = history.errors.get(name, 0) + 1
            else:
                history.bad.append(line)
    return history


def overlaps(sections: list[Section]) -> list[tuple[Section, Section]]:
    """Pairs of sections of different holders that overlapped with neither told."""
    found = []
    ordered = sorted((s for s in sections if s.granted), key=lambda s: s.granted)
    for i, first in enumerate(ordered):
        for second in ordered[i + 1 :]:
            if second.granted >= first.left:
                break
            if not (first.told or second.told):
                found.append((first, second))
    return found


def longest_pause(times: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest stretch of ``[start, end]`` with no time of ``times`` in it, and its start."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max((b - a, a) for a, b in zip(points, points[1:], strict=False))


def check(
    history: History,
    *,
    fault_at: float,
    until: float,
    counter: int,
    balances: tuple[int, int] | None,
    durable: bool,
    resume_within: float,
    grants_within: float | None = None,
    settle: float = 5.0,
) -> list[str]:
    """Every anomaly of a failover run (see the module's docstring); empty if none.

    ``counter`` is the final value of "n"; ``balances`` the final ("a", "b"),
    None if the run made no transfers; ``durable``: acknowledged writes must
    all be kept (``CACHEKIT_REDIS_DURABLE_WRITES``); ``resume_within``: the
    longest pause of increments and grants allowed after the fault; ``settle``:
    seconds after the fault past which progress must be seen again;
    ``grants_within``: the longest pause of lock grants (default
    ``resume_within``): a lease whose release the failover swallowed is
    waited out, at most one lease.
    """
    problems = [f"an error that is not cachekit's reached a caller: {line}" for line in history.bad]
    increments, sections = history.increments, history.sections
    for what, times, within in (
        ("increments", [at for at, _ in increments], resume_within),
        ("lock grants", [s.granted for s in sections if s.granted], grants_within),
    ):
        before = sum(1 for at in times if at < fault_at)
        after = sum(1 for at in times if at > fault_at + settle)
        if before < 20 or after < 20:
            problems.append(f"too little progress of {what}: {before} before, {after} after")
        pause, at = longest_pause(times, fault_at, until - 0.5)
        if pause > (resume_within if within is None else within):
            problems.append(f"no {what} for {pause:.2f} s from +{at - fault_at:.2f} s")
    untold = overlaps(sections)
    if untold:
        problems.append(f"{len(untold)} untold overlaps of lock holders, first {untold[:3]}")
    granted = sorted((s for s in sections if s.granted), key=lambda s: s.granted)
    backwards = [(a, b) for a, b in zip(granted, granted[1:], strict=False) if b.token <= a.token]
    if backwards:
        problems.append(f"fencing tokens went backwards {len(backwards)} times: {backwards[:3]}")
    values = [value for _, value in increments]
    lost: list[str] = []
    if len(values) != len(set(values)):
        lost.append(f"{len(values) - len(set(values))} increment values handed out twice")
    if values and (counter < len(values) or counter < max(values)):
        lost.append(f"{len(values)} increments acknowledged up to {max(values)}; counter {counter}")
    if balances is not None:
        a, b = balances
        acknowledged = sum(1 for _, outcome in history.transfers if outcome == "ok")
        unknown = sum(1 for _, outcome in history.transfers if outcome == "unknown")
        if a + b != 0:
            problems.append(f"money not conserved: a={a}, b={b}")
        if not acknowledged <= b <= acknowledged + unknown:
            lost.append(f"{acknowledged} transfers acknowledged, {unknown} unknown; b={b}")
    if durable:
        problems += lost
    return problems
