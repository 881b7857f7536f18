"""The checker finds each kind of anomaly it promises to find (a checker that cannot fail is
worth nothing), and accepts what the contract allows (unknown outcomes, told holders)."""

from __future__ import annotations

from typing import Any

from .checker import TOLD, check
from .history import FAIL, INFO, OK, Op


def op(kind: str, outcome: str, value: Any = None, arg: Any = None, at: float = 0.0) -> Op:
    return Op(f"{kind}-{at}-{value}", kind, arg, outcome, value, began=at, ended=at + 0.1)


def section(outcome: str, entered: float, left: float, token: int, pid: int = 7) -> Op:
    value = {"entered": entered, "left": left, "token": token, "pid": pid}
    done = op("section", outcome, value, at=entered)
    done.ended = left
    return done


PAUSED_7 = [(7, 2.6, 3.2)]  # process 7 was paused meanwhile


def whats(history: list[Op], final: dict[str, Any], excuses: Any = PAUSED_7) -> list[str]:
    return [anomaly.what for anomaly in check(history, final, 2000, excuses)]


def test_an_exact_history_passes_including_unknown_outcomes() -> None:
    history = [
        op("incr", OK, 1),
        op("incr", INFO),
        op("incr", OK, 3),
        op("append", OK, arg="a"),
        op("append", INFO, arg="b"),
        op("append", FAIL, arg="c"),
        op("transfer", OK),
        section(OK, 1.0, 2.0, 10),
        section(TOLD, 2.5, 4.0, 11),  # paused, overtaken, told (its get/set counted)
        section(TOLD, 2.8, 2.9, 5),  # paused between its grant and recording its entry
        section(OK, 3.0, 3.5, 12, pid=8),  # overlaps the told holder: allowed
        section(INFO, 4.0, 4.2, 13, pid=8),
    ]
    final = {"counter": 3, "log": ["a"], "acct:a": 999, "acct:b": 1001, "guarded": 4}
    assert whats(history, final) == []


def test_every_kind_of_anomaly_is_reported() -> None:
    history = [
        op("incr", OK, 1),
        op("incr", OK, 1),
        op("append", OK, arg="a"),
        op("append", FAIL, arg="c"),
        op("transfer", OK),
        section(OK, 1.0, 2.0, 10),
        section(OK, 1.5, 2.5, 9),
        section(TOLD, 5.0, 6.0, 20),  # told, with no pause of its process: overtaken early
        section(INFO, 5.5, 5.8, 21, pid=8),  # an unknown section overlapping an ok one
        section(OK, 5.6, 5.9, 22, pid=9),
    ]
    final = {"counter": 1, "log": ["c", "c", "x"], "acct:a": 999, "acct:b": 1000, "guarded": 1}
    found = whats(history, final)
    for expected in (
        "counter: 1 was handed out 2 times",
        "counter: final 1 for 2 acknowledged",
        "append: 'c' is in the list 2 times",
        "append: 'x' is in the list but was never appended",
        "append: acknowledged 'a' is missing",
        "money: the balances add up to 1999",
        "lock: two holders overlapped, neither told",
        "lock: a later holder got a token no larger",
        "lock: a holder was told LeaseLost with no pause or lost lease",
    ):
        assert any(what.startswith(expected) for what in found), (expected, found)


def test_the_guarded_counter_is_checked_despite_unknown_sections() -> None:
    history = [section(OK, 1.0, 1.1, 1), section(OK, 2.0, 2.1, 2), section(INFO, 3.0, 3.1, 3)]
    assert whats(history, {"guarded": 3}) == []
    assert whats(history, {"guarded": 2}) == []
    assert whats(history, {"guarded": 1}) == [
        "lock: the guarded counter is 1, for 2 sections (0 told, 1 unknown)"
    ]
    found = whats(
        [section(OK, 1.0, 2.0, 1, pid=1), section(INFO, 1.5, 2.5, 2, pid=2)], {"guarded": 2}
    )
    assert found == ["lock: two holders overlapped, neither told"]


def test_a_told_holder_keeps_the_guarded_counter_bounded_above() -> None:
    history = [
        section(OK, 1.0, 2.0, 1, pid=8),
        section(TOLD, 2.5, 4.0, 2),
        section(OK, 3, 3.5, 3, 9),
    ]
    assert whats(history, {"guarded": 3}) == []
    assert whats(history, {"guarded": 1}) == []  # the told holder's stale write undid one
    assert whats(history, {"guarded": 4})[0].startswith("lock: the guarded counter is 4")


def test_a_value_older_than_a_returned_invalidation_is_reported() -> None:
    history = [
        op("invalidate", OK, 3, at=1.0),  # ended at 1.1
        op("invalidate", INFO, 9, at=1.0),  # unknown: proves nothing
        op("memo", OK, 2, at=1.05),  # began before it returned: may be older
        op("memo", OK, 3, at=1.2),
        op("memo", OK, 4, at=1.3),
        op("memo", OK, 2, at=1.4),  # began after: must be 3 or later
    ]
    assert whats(history, {}) == [
        "memo: got version 2 after the invalidation of version 3 had returned"
    ]
