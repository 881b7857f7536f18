"""Checks a history exactly, and prints every anomaly with the history around it.

What must hold, whatever the faults:

- **counter**: every value an ``ok`` incr returned is distinct, none exceeds
  the final value, and the final value is at least the number of ``ok``
  incrs and at most that plus the unknown ones (``info``).
- **append**: every ``ok`` item is in the final list exactly once; an
  unknown item at most once; a ``fail`` item, or an item never appended, not at all.
- **transfer**: the two balances add up to what they started with.
- **section** (a ``lock`` held while a plain get/set bumps a counter): no two
  sections overlap in time unless one of them was told (``LeaseLost``), and a
  holder is told only when it was paused or its lease was lost with a Redis
  that persists nothing (the runner passes those windows); each section's
  fencing token is larger than that of the section that entered before it;
  the plain counter is at most the sections that ran, and with nobody told at
  least the acknowledged ones (a told holder's stale write may undo any
  number of increments: the plain store checks no fencing token). Sections
  keep their times whatever their outcome, so an unknown one is checked for
  overlaps too.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .history import FAIL, INFO, OK, Op

#: A section that raised LeaseLost on exit: it ran, but knew it may have overlapped.
TOLD = "told"
#: Pids in an excuse window that concern every process: a restart of a Redis that kept
#: nothing (state erased), and an outage of the server longer than half a lease.
ERASED, OUTAGE = 0, -1


@dataclass(frozen=True)
class Anomaly:
    what: str
    ops: tuple[Op, ...] = ()


def check(
    history: list[Op],
    final: dict[str, Any],
    opening_total: int,
    excuses: Sequence[tuple[int, float, float]] = (),
) -> list[Anomaly]:
    """Every anomaly in ``history`` given the ``final`` state; empty if it is exact.

    ``excuses`` are the windows in which a holder may lose its lock: (pid, or 0
    for every process; start; end) of each pause and of each restart of a
    Redis that persists nothing. A holder told ``LeaseLost`` outside them is
    an anomaly, and so is an overlap that no told holder explains.
    """
    anomalies: list[Anomaly] = []
    anomalies += _counter(history, final.get("counter"))
    anomalies += _append(history, final.get("log") or [])
    if any(op.kind == "transfer" for op in history):
        total = (final.get("acct:a") or 0) + (final.get("acct:b") or 0)
        if total != opening_total:
            anomalies.append(Anomaly(f"money: the balances add up to {total}, not {opening_total}"))
    anomalies += _sections(history, final.get("guarded"), list(excuses))
    anomalies += _invalidations(history)
    return anomalies


def _invalidations(history: list[Op]) -> list[Anomaly]:
    """A memoized call that began after ``invalidate`` returned got a value computed after it.

    Each acknowledged invalidation carries the ``version`` it raised before
    invalidating; a memoized call's value is the version its computation
    read. So a call that began after the invalidation of version v ended
    must get v or later, fresh or stale.
    """
    done = sorted(
        (op for op in history if op.kind == "invalidate" and op.outcome == OK),
        key=lambda op: op.ended,
    )
    if not done:
        return []
    ends = [op.ended for op in done]
    newest: list[Op] = []  # newest[i]: the highest version among done[: i + 1]
    for op in done:
        newest.append(op if not newest or op.value > newest[-1].value else newest[-1])
    found = []
    for op in history:
        if op.kind != "memo" or op.outcome != OK:
            continue
        before = bisect.bisect_left(ends, op.began)  # invalidations that ended before it began
        if before and op.value < newest[before - 1].value:
            found.append(
                Anomaly(
                    f"memo: got version {op.value} after the invalidation of"
                    f" version {newest[before - 1].value} had returned",
                    (newest[before - 1], op),
                )
            )
    return found


def _counter(history: list[Op], final: int | None) -> list[Anomaly]:
    incrs = [op for op in history if op.kind == "incr"]
    if not incrs:
        return []
    final = final or 0
    ok = [op for op in incrs if op.outcome == OK]
    unknown = sum(op.outcome == INFO for op in incrs)
    found = []
    for value, count in Counter(op.value for op in ok).items():
        if count > 1:
            found.append(
                Anomaly(
                    f"counter: {value} was handed out {count} times",
                    tuple(op for op in ok if op.value == value),
                )
            )
    for op in ok:
        if not 1 <= op.value <= final:
            found.append(Anomaly(f"counter: {op.value} is outside 1..{final}", (op,)))
    if not len(ok) <= final <= len(ok) + unknown:
        found.append(
            Anomaly(
                f"counter: final {final} for {len(ok)} acknowledged and {unknown} unknown incrs"
            )
        )
    return found


def _append(history: list[Op], final: list[Any]) -> list[Anomaly]:
    appends = {op.arg: op for op in history if op.kind == "append"}
    found = []
    for item, count in Counter(final).items():
        op = appends.get(item)
        if op is None:
            found.append(Anomaly(f"append: {item!r} is in the list but was never appended"))
        elif count > 1:
            found.append(Anomaly(f"append: {item!r} is in the list {count} times", (op,)))
        elif op.outcome == FAIL:
            found.append(Anomaly(f"append: {item!r} failed but is in the list", (op,)))
    present = set(final)
    for item, op in appends.items():
        if op.outcome == OK and item not in present:
            found.append(Anomaly(f"append: acknowledged {item!r} is missing", (op,)))
    return found


def _sections(
    history: list[Op], guarded: int | None, excuses: list[tuple[int, float, float]]
) -> list[Anomaly]:
    everyone = [op for op in history if op.kind == "section"]
    timed = [
        op
        for op in everyone
        if isinstance(op.value, dict) and "entered" in op.value and "left" in op.value
    ]
    if not everyone:
        return []
    found = []

    def excused(op: Op) -> bool:  # from the op's start: a pause may strike before "entered"
        pid, began, ended = op.value.get("pid", -2), op.began, op.ended or op.began
        return any(
            who in (ERASED, OUTAGE, pid) and start <= ended and began <= stop
            for who, start, stop in excuses
        )

    for op in timed:
        if op.outcome == TOLD and not excused(op):
            found.append(
                Anomaly("lock: a holder was told LeaseLost with no pause or lost lease", (op,))
            )
    by_entry = sorted(timed, key=lambda op: op.value["entered"])
    for i, first in enumerate(by_entry):
        for second in by_entry[i + 1 :]:
            if second.value["entered"] >= first.value["left"]:
                break
            if TOLD not in (first.outcome, second.outcome):
                found.append(Anomaly("lock: two holders overlapped, neither told", (first, second)))
    # Fencing order, among holders not told: a told holder may have been paused between its
    # grant and recording its entry, so its recorded entry can come after later grants.
    trusted = [op for op in by_entry if op.outcome != TOLD]
    for first, later in zip(trusted, trusted[1:], strict=False):
        if later.value["token"] <= first.value["token"]:
            found.append(Anomaly("lock: a later holder got a token no larger", (first, later)))
    ok = sum(op.outcome == OK for op in everyone)
    unknown = sum(op.outcome == INFO for op in everyone)
    told = sum(op.outcome == TOLD for op in everyone)
    erased = any(who == ERASED for who, _, _ in excuses)  # guarded was erased with the rest
    # A told holder's stale write (it read before its pause) undoes every increment made
    # while it was paused, as a store that checks no fencing token must: then only the
    # upper bound holds.
    low = ok if not told else 0
    if not erased and not low <= (guarded or 0) <= ok + told + unknown:
        found.append(
            Anomaly(
                f"lock: the guarded counter is {guarded}, for {ok} sections"
                f" ({told} told, {unknown} unknown)"
            )
        )
    return found


def report(history: list[Op], anomalies: list[Anomaly], window: float = 0.3) -> str:
    """The anomalies, each with the operations that ran within ``window`` s of it."""
    lines = []
    for anomaly in anomalies:
        lines.append(f"ANOMALY: {anomaly.what}")
        for op in anomaly.ops:
            lines.append(f"  {_show(op)}")
            around = [
                other
                for other in history
                if other is not op
                and other.began <= op.ended + window
                and (other.ended or other.began) >= op.began - window
            ]
            for other in around[:20]:
                lines.append(f"    nearby: {_show(other)}")
    return "\n".join(lines)


def _show(op: Op) -> str:
    return (
        f"{op.id} {op.kind}({op.arg!r}) -> {op.outcome} {op.value!r}"
        f" [{op.began:.3f} .. {op.ended:.3f}]"
    )


def summary(history: list[Op]) -> dict[str, dict[str, int]]:
    """Counts of outcomes per kind of operation, for the run's report."""
    counts: dict[str, Counter[str]] = {}
    for op in history:
        counts.setdefault(op.kind, Counter())[op.outcome] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}


__all__ = ["Anomaly", "FAIL", "INFO", "OK", "TOLD", "check", "report", "summary"]
