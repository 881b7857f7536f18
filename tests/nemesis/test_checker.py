"""The checker finds each kind of anomaly it promises to find (a checker that cannot fail is
worth nothing), and accepts what the contract allows (unknown outcomes, told holders whose
lease a pause or restart took).

Every test starts from :func:`clean`, a small history of every workload kind that passes,
and changes one thing: the anomaly it names must then be reported, and nothing else needed
for it. ``test_every_anomaly_kind_has_a_test`` keeps the list of kinds and the tests in step
with the checker's source.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from .checker import ERASED, FAILOVER, PAUSE, RESTART, TOLD, Client, Excuse, Run, check
from .history import FAIL, INFO, OK, Computation, Op, Recorder, attach_notes, load
from .workloads import EXPIRE_SECONDS, KINDS, LIMIT

LEASE = 1.0


def op(
    kind: str,
    outcome: str,
    value: Any = None,
    arg: Any = None,
    at: float = 0.0,
    client: str = "7",
) -> Op:
    return Op(
        f"{kind}-{at}-{value}-{arg}", kind, arg, outcome, value, began=at, ended=at + 0.1,
        client=client,
    )  # fmt: skip


def section(
    outcome: str,
    granted: float,
    left: float | None,
    token: int,
    pid: int = 7,
    began: float | None = None,
) -> Op:
    """A section: ``left`` None is a holder with no recorded exit (killed inside)."""
    value: dict[str, Any] = {"granted": granted, "token": token, "pid": pid}
    if left is not None:
        value["left"] = left
    done = op("section", outcome, value, at=granted - 0.01 if began is None else began)
    done.ended = 0.0 if left is None else left + 0.001
    return done


def clean() -> tuple[list[Op], dict[str, Any]]:
    """A history of every kind, with unknown and failed outcomes, that is exact."""
    history = [
        op("open", OK, arg="d", at=-1.0),
        op("incr", OK, 1, at=0.0),
        op("incr", INFO, at=0.2),
        op("incr", OK, 3, at=0.5),
        op("append", OK, arg="a", at=0.0),
        op("append", INFO, arg="b", at=0.2),
        op("append", FAIL, arg="c", at=0.3),
        op("append", OK, arg="d", at=0.5),
        op("transfer", OK, arg="ab.1", at=0.0),
        op("transfer", OK, arg="ba.2", at=0.5),
        op("transfer", INFO, arg="ab.3", at=0.7),
        op("transfer", FAIL, arg="ba.4", at=0.8),
        op("transfer", OK, arg="ab.5", at=1.0),
        section(OK, 1.0, 1.1, 10),
        section(OK, 1.2, 1.3, 11, pid=8),
        section(INFO, 1.4, 1.5, 12),
        op("invalidate", OK, 3, at=1.0),
        op("memo", OK, 3, at=1.2),
        *(op("limit", OK, [True, 7], arg="fixed:1", at=1.0 + i / 10) for i in range(LIMIT)),
        op("limit", OK, [False, 7], arg="fixed:1", at=6.0),
        op("limit", INFO, arg="moving:1", at=1.0),
        *(op("limit", OK, [True, 7], arg="moving:1", at=2.0 + i / 10) for i in range(LIMIT - 1)),
        op("limit", OK, [False, 7], arg="moving:1", at=7.0),  # the unknown hit may have landed
        op("limit", OK, [True, 7], arg="sliding:1", at=1.0),
    ]
    final = {
        "counter": 3,
        "log": ["a", "b", "d"],
        "transfers": ["ab.1", "ba.2", "ab.5"],
        "acct:a": 999,
        "acct:b": 1001,
        "guarded": 3,
    }
    return history, final


def run(**changes: Any) -> Run:
    """One client process (7, spelling "d") that ran every kind; change what a test needs."""
    base = Run(
        kinds=KINDS,
        clients=(Client("7", "d", 0.0, 10.0),),
        lease=LEASE,
        min_ok=1,
        min_life=100.0,
    )
    return dataclasses.replace(base, **changes)


def whats(history: list[Op], final: dict[str, Any], the_run: Run | None = None) -> list[str]:
    return [anomaly.what for anomaly in check(history, final, 2000, the_run or run())]


def assert_finds(found: list[str], *expected: str) -> None:
    for prefix in expected:
        assert any(what.startswith(prefix) for what in found), (prefix, found)


def only_sections(*sections: Op, guarded: int | None = None, **changes: Any) -> list[str]:
    """The anomalies of a history of sections only (guarded: the ok ones unless given)."""
    history = [op("open", OK, at=-1.0), *sections]
    ok = sum(s.outcome == OK for s in sections)
    the_run = run(kinds=("section",), min_ok=0, **changes)  # progress: tested apart
    return whats(history, {"guarded": ok if guarded is None else guarded}, the_run)


# -- whole and partial histories ---------------------------------------------------


def test_a_clean_history_passes_including_unknown_outcomes() -> None:
    history, final = clean()
    assert whats(history, final) == []
    assert whats(history, final, run(lease=None)) == []  # a kernel lock: nothing told, fine


def test_an_empty_history_fails() -> None:
    found = whats([], {}, Run(kinds=KINDS, clients=()))
    assert_finds(found, "progress: no client ran", "progress: 0 acknowledged incr operations")
    for kind in KINDS:
        assert any(f"0 acknowledged {kind} operations in all" in what for what in found), kind
    # the clients ran and the history is empty all the same
    assert_finds(whats([], {}), "progress: 0 acknowledged section operations on 'd'")


def test_no_configured_workload_fails() -> None:
    history, final = clean()
    assert_finds(whats(history, final, run(kinds=())), "progress: no workload was configured")


def test_a_kind_that_is_absent_fails_its_minimum() -> None:
    """No rule passes because its kind never ran: the minimum says so."""
    history, final = clean()
    history = [o for o in history if o.kind != "section"]
    assert whats(history, {**final, "guarded": 0}) == [
        "progress: 0 acknowledged section operations in all, fewer than 1",
        "progress: 0 acknowledged section operations on 'd', fewer than 1",
    ]
    assert_finds(
        whats(history, final, run(min_ok=5)), "progress: 2 acknowledged incr operations in all"
    )


def test_a_kind_never_configured_fails() -> None:
    history, final = clean()
    history.append(op("shuffle", OK, at=2.0))
    assert whats(history, final) == ["progress: 1 operations of 'shuffle', never configured"]


def test_a_missing_process_fails() -> None:
    """A client that ran long enough and acknowledged nothing (or not every kind)."""
    history, final = clean()
    quiet = run(clients=(Client("7", "d", 0.0, 10.0), Client("8", "d", 0.0, 10.0)), min_life=2)
    assert_finds(
        whats(history, final, quiet), "progress: client 8 ('d') ran 10.0 s and acknowledged no"
    )
    # per kind: client 8 did its incrs only
    history.append(op("incr", OK, 4, at=0.8, client="8"))
    found = whats(history, {**final, "counter": 4}, quiet)
    assert found == [
        "progress: client 8 ('d') ran 10.0 s and acknowledged no operation of"
        " append, transfer, section, invalidate, memo, limit"
    ]
    # short-lived, or paused most of its life: not held to it; HTTP clients: any kind will do
    brief = run(clients=(Client("7", "d", 0.0, 10.0), Client("8", "d", 0.0, 1.0)), min_life=2)
    assert whats(history, {**final, "counter": 4}, brief) == []
    stopped = Client("8", "d", 0.0, 10.0, paused=9.0)
    assert whats(history, {**final, "counter": 4}, dataclasses.replace(quiet, clients=(
        Client("7", "d", 0.0, 10.0), stopped))) == []  # fmt: skip
    assert whats(history, {**final, "counter": 4}, run(
        clients=quiet.clients, min_life=2, every_kind_per_client=False)) == []  # fmt: skip


def test_a_crashed_process_fails_unless_the_nemesis_killed_it() -> None:
    history, final = clean()
    crashed = Client("8", "d", 0.0, 0.1, exitcode=1)
    assert whats(history, final, run(clients=(Client("7", "d", 0.0, 10.0), crashed))) == [
        "progress: client 8 ('d') exited with code 1, not killed by the nemesis"
    ]
    killed = Client("8", "d", 0.0, 0.1, exitcode=-9, killed=True)
    assert whats(history, final, run(clients=(Client("7", "d", 0.0, 10.0), killed))) == []


def test_clients_that_all_crashed_in_open_cache_fail() -> None:
    history = [op("open", FAIL, "OSError: no such directory", "d", client=c) for c in "78"]
    clients = (Client("7", "d", 0, 0.1, exitcode=1), Client("8", "d", 0, 0.1, exitcode=1))
    found = whats(history, {}, run(clients=clients))
    assert_finds(
        found,
        "refused: 2 open operations on 'd' were refused: OSError",
        "progress: client 7 ('d') exited with code 1",
        "progress: 0 acknowledged incr operations in all",
    )


def test_a_refused_spelling_fails_though_another_made_progress() -> None:
    history, final = clean()
    history.append(op("open", FAIL, "ConfigurationError: two stores", "link", client="8"))
    clients = (Client("7", "d", 0.0, 10.0), Client("8", "link", 0.0, 0.1, exitcode=1))
    found = whats(history, final, run(clients=clients))
    assert_finds(
        found,
        "refused: 1 open operations on 'link' were refused: ConfigurationError: two stores",
        "progress: 0 acknowledged incr operations on 'link'",
        "progress: client 8 ('link') exited with code 1",
    )
    # refused by an operation rather than on opening: the same
    history, final = clean()
    history.append(op("incr", FAIL, "ConfigurationError: maxmemory-policy", at=2.0))
    assert whats(history, final) == [
        "refused: 1 incr operations on 'd' were refused: ConfigurationError: maxmemory-policy"
    ]


# -- counter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "final", "expected"),
    [
        (op("incr", OK, 1, at=0.05), 4, "counter: 1 was handed out 2 times"),
        (op("incr", OK, 9, at=0.6), 4, "counter: 9 is outside 1..4"),
        (op("incr", OK, 4, at=0.7), 3, "counter: 4 is outside 1..3"),
        (op("incr", OK, 2, at=0.7), 3, "counter: 2 was handed out after 3 had been"),
        (None, 5, "counter: final 5 for 2 acknowledged and 1 unknown incrs"),
        (None, 1, "counter: final 1 for 2 acknowledged and 1 unknown incrs"),
    ],
)
def test_counter_anomalies(change: Op | None, final: int, expected: str) -> None:
    history, state = clean()
    if change is not None:
        history.append(change)
    assert_finds(whats(history, {**state, "counter": final}), expected)


def test_counter_real_time_order_allows_concurrent_incrs() -> None:
    history, final = clean()
    history.append(op("incr", OK, 2, at=0.45))  # began before 3 was acknowledged: either order
    assert whats(history, {**final, "counter": 3}) == []


# -- append and transfer ledgers ----------------------------------------------------


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (["a", "b", "d", "x"], "append: 'x' is in the list but was never appended"),
        (["a", "b", "d", "d"], "append: 'd' is in the list 2 times"),
        (["a", "b", "c", "d"], "append: 'c' failed but is in the list"),
        (["a", "b"], "append: acknowledged 'd' is missing"),
        (["d", "a"], "append: 'd' is before 'a' in the list, though it began after 'a'"),
    ],
)
def test_append_anomalies(log: list[str], expected: str) -> None:
    history, final = clean()
    assert_finds(whats(history, {**final, "log": log}), expected)


def test_an_unknown_append_may_be_anywhere_or_absent() -> None:
    history, final = clean()
    assert whats(history, {**final, "log": ["a", "d"]}) == []
    history.append(op("append", INFO, arg="e", at=0.05))  # began before "a" was acknowledged
    assert whats(history, {**final, "log": ["e", "a", "b", "d"]}) == []
    assert whats(history, {**final, "log": ["b", "a", "d"]}) == [  # began after: must follow it
        "append: 'b' is before 'a' in the list, though it began after 'a' was acknowledged"
    ]


@pytest.mark.parametrize(
    ("ledger", "a", "expected"),
    [
        (["ab.1", "ba.2", "ab.5", "ab.9"], 998, "transfer: 'ab.9' is in the list but was never"),
        (["ab.1", "ba.2", "ab.5", "ab.5"], 998, "transfer: 'ab.5' is in the list 2 times"),
        (["ab.1", "ba.2", "ba.4", "ab.5"], 1000, "transfer: 'ba.4' failed but is in the list"),
        (["ab.1", "ba.2"], 1000, "transfer: acknowledged 'ab.5' is missing"),
        (["ba.2", "ab.1", "ab.5"], 999, "transfer: 'ba.2' is before 'ab.1' in the list"),
    ],
)
def test_transfer_anomalies(ledger: list[str], a: int, expected: str) -> None:
    history, final = clean()
    found = whats(history, {**final, "transfers": ledger, "acct:a": a, "acct:b": 2000 - a})
    assert_finds(found, expected)


def test_a_lost_acknowledged_transfer_fails_though_money_is_conserved() -> None:
    history, final = clean()
    lost = {**final, "transfers": ["ab.1", "ba.2"], "acct:a": 1000, "acct:b": 1000}
    assert whats(history, lost) == ["transfer: acknowledged 'ab.5' is missing"]


def test_money_anomalies() -> None:
    history, final = clean()
    assert_finds(
        whats(history, {**final, "acct:b": 1000}),
        "money: the balances add up to 1999, not 2000",
        "money: the balances are 999 and 1000, but the 3 transfers in the ledger make them"
        " 999 and 1001",
    )
    assert whats(history, {**final, "acct:a": 1000, "acct:b": 1000}) == [
        "money: the balances are 1000 and 1000, but the 3 transfers in the ledger make them"
        " 999 and 1001"
    ]
    ledger = [*final["transfers"], "ab.3"]  # the unknown one landed: its effect must too
    assert whats(history, {**final, "transfers": ledger, "acct:a": 998, "acct:b": 1002}) == []


# -- locks --------------------------------------------------------------------------


def test_overlapping_holders_neither_told() -> None:
    a, b = section(OK, 1.0, 2.0, 1), section(OK, 1.5, 2.5, 2, pid=8)
    assert only_sections(a, b) == ["lock: two holders overlapped, neither told"]
    assert only_sections(a, section(OK, 2.1, 2.5, 2, pid=8)) == []
    unknown = section(INFO, 1.5, 2.5, 2, pid=8)  # unknown outcome: its times still count
    assert only_sections(a, unknown, guarded=2) == ["lock: two holders overlapped, neither told"]


def test_a_killed_holder_with_no_exit_still_counts() -> None:
    """With no recorded exit, a holder holds until it is killed, or its lease may have run out."""
    killed = section(INFO, 1.0, None, 1)
    later = section(OK, 2.0, 2.1, 2, pid=8)
    kernel = {"lease": None}  # FileSystemCache, LMDBCache: held until death
    assert only_sections(killed, later, deaths={7: 3.0}, **kernel) == [
        "lock: two holders overlapped, neither told"
    ]
    assert only_sections(killed, later, deaths={7: 1.5}, **kernel) == []
    assert only_sections(killed, later, ended=5.0, **kernel) == [  # never known dead
        "lock: two holders overlapped, neither told"
    ]
    # a lease of 1 s: held until 1.9 at least (1.0 + lease - slack), whoever killed it when
    assert only_sections(killed, later) == []
    assert only_sections(killed, section(OK, 1.5, 1.6, 2, pid=8)) == [
        "lock: two holders overlapped, neither told"
    ]
    assert only_sections(killed, section(OK, 1.5, 1.6, 2, pid=8), deaths={7: 1.2}) == []
    # ... and in fencing: a holder certainly granted after it has a larger token
    assert only_sections(killed, section(OK, 2.0, 2.1, 0, pid=8)) == [
        "lock: a later holder got a token no larger"
    ]


def test_a_told_holder_needs_a_pause_or_restart_that_struck_it() -> None:
    told = section(TOLD, 1.0, 3.0, 1)
    assert only_sections(told) == ["lock: a holder was told LeaseLost with no pause or lost lease"]
    assert only_sections(told, lease=None) == [
        "lock: a holder was told LeaseLost by a lock with no lease"
    ]
    assert only_sections(told, excuses=(Excuse(PAUSE, 7, 1.05, 3.0),)) == []
    assert only_sections(told, excuses=(Excuse(PAUSE, 9, 1.05, 3.0),)) == [  # another process
        "lock: a holder was told LeaseLost with no pause or lost lease"
    ]
    assert only_sections(told, excuses=(Excuse(PAUSE, 7, 3.5, 5.0),)) == [  # after it left
        "lock: a holder was told LeaseLost with no pause or lost lease"
    ]
    assert only_sections(told, excuses=(Excuse(RESTART, 0, 1.5, 1.8),)) == []
    # stopped after noting its exit (3.0), before its release reached Redis (it ended at 3.001)
    assert only_sections(told, excuses=(Excuse(PAUSE, 7, 3.0005, 6.0),)) == []


def test_an_overlap_is_excused_only_by_a_pause_of_that_holder_a_lease_before() -> None:
    paused = section(TOLD, 1.0, 4.0, 1)
    pause = (Excuse(PAUSE, 7, 1.05, 3.5),)

    def other(at: float) -> Op:
        return section(OK, at, at + 0.1, 2, pid=8)

    assert only_sections(paused, other(2.2), excuses=pause) == []  # its lease ran out: fine
    unexplained = ["lock: two holders overlapped, with no pause or restart that explains it"]
    assert only_sections(paused, other(1.06), excuses=pause) == unexplained  # 10 ms after
    assert only_sections(paused, other(1.5), excuses=pause) == unexplained  # within its lease
    # an overlap that began before the pause
    late_pause = (Excuse(PAUSE, 7, 2.5, 3.5),)
    assert only_sections(paused, other(2.2), excuses=late_pause) == unexplained
    # a pause of another process
    assert only_sections(paused, other(2.2), excuses=(Excuse(PAUSE, 9, 1.05, 3.5),)) == [
        "lock: a holder was told LeaseLost with no pause or lost lease",
        *unexplained,
    ]
    # the holder that was overtaken must be the one not acknowledged
    ok_paused = section(OK, 1.0, 4.0, 1)
    assert only_sections(ok_paused, other(2.2), excuses=pause) == [
        "lock: two holders overlapped, neither told"
    ]


def test_a_pause_is_judged_by_the_servers_grant_times_where_tokens_are_them() -> None:
    """A holder whose note came late (its process starved after the reply) is overtaken a
    lease after the server granted it, by the tokens (the server's time in us): excused;
    tokens less than a lease apart are not, whatever the notes say."""
    base = 1_796_687_414_587_913  # (a token: the server's TIME in microseconds)
    pause = (Excuse(PAUSE, 7, 1.2, 4.0),)
    late = section(TOLD, 1.15, 4.0, base)  # noted 0.15 s after the server's grant
    apart = section(OK, 2.0, 2.1, base + 1_000_100, pid=8)  # 0.85 s (a lease: 1 s) after
    assert only_sections(late, apart, excuses=pause) == []
    early = section(OK, 2.0, 2.1, base + 800_000, pid=8)  # the lease taken early
    unexplained = ["lock: two holders overlapped, with no pause or restart that explains it"]
    assert only_sections(late, early, excuses=pause) == unexplained
    # counter tokens say nothing of time: judged by the notes alone
    counted = section(TOLD, 1.15, 4.0, 10)
    assert only_sections(counted, section(OK, 2.0, 2.1, 1_000_111, pid=8), excuses=pause) == (
        unexplained
    )
    # a holder stopped long after its grant had renewed its lease until then (every third
    # of a lease): the lease ran from its last renewal, by the notes and by the tokens
    renewing = section(TOLD, 1.0, 6.0, base)
    stopped = (Excuse(PAUSE, 7, 3.0, 5.5),)
    soon = section(OK, 3.2, 3.3, base + 2_200_000, pid=8)  # 2.2 s after the grant
    assert only_sections(renewing, soon, excuses=stopped) == unexplained
    after = section(OK, 3.7, 3.8, base + 2_700_000, pid=8)  # a lease after 3.0 - 1/3
    assert only_sections(renewing, after, excuses=stopped) == []


def test_a_holder_paused_before_noting_its_grant_may_be_overtaken() -> None:
    """Granted, stopped before it noted it, overtaken: its noted grant comes after the other."""
    late = section(TOLD, 3.4, 3.5, 1, began=0.9)  # noted on resuming
    other = section(OK, 3.0, 3.6, 2, pid=8)
    assert only_sections(late, other, excuses=(Excuse(PAUSE, 7, 1.0, 3.3),)) == []
    assert only_sections(late, other) == [
        "lock: a holder was told LeaseLost with no pause or lost lease",
        "lock: two holders overlapped, with no pause or restart that explains it",
        "lock: a later holder got a token no larger",
    ]


def test_a_durable_restart_excuses_only_holders_it_struck_a_lease_before() -> None:
    restart = (Excuse(RESTART, 0, 1.05, 1.3),)
    struck = section(TOLD, 1.0, 3.0, 1)
    assert only_sections(struck, section(OK, 2.0, 2.1, 2, pid=8), excuses=restart) == []
    assert only_sections(struck, section(OK, 1.4, 1.5, 2, pid=8), excuses=restart) == [
        "lock: two holders overlapped, with no pause or restart that explains it"
    ]
    # granted while the server was stopping (it serves until it exits), its release answered
    # once it was back, past its lease: rightly told; overtaken no sooner than a lease after
    stopping = section(TOLD, 1.1, 1.15, 1, began=1.08)
    stopping.ended = 2.5
    assert only_sections(stopping, excuses=restart) == []
    assert only_sections(stopping, section(OK, 1.12, 1.13, 2, pid=8), excuses=restart) == [
        "lock: two holders overlapped, with no pause or restart that explains it"
    ]
    # a holder that began after the restart: not excused by it
    after = section(TOLD, 1.5, 3.0, 1)
    assert only_sections(after, section(OK, 2.6, 2.7, 2, pid=8), excuses=restart) == [
        "lock: a holder was told LeaseLost with no pause or lost lease",
        "lock: two holders overlapped, with no pause or restart that explains it",
    ]


def test_a_restart_that_erased_the_leases_excuses_holders_granted_before_it() -> None:
    erased = (Excuse(ERASED, 0, 1.5, 1.7),)
    struck = section(TOLD, 1.0, 3.0, 1)
    assert only_sections(struck, section(OK, 1.8, 1.9, 2, pid=8), excuses=erased) == []
    assert only_sections(struck, section(OK, 1.2, 1.3, 2, pid=8), excuses=erased) == [
        "lock: two holders overlapped, with no pause or restart that explains it"
    ]
    granted_after = section(TOLD, 2.0, 3.0, 1)  # by the new server: its lease was not erased
    assert only_sections(granted_after, section(OK, 2.5, 2.6, 2, pid=8), excuses=erased) == [
        "lock: a holder was told LeaseLost with no pause or lost lease",
        "lock: two holders overlapped, with no pause or restart that explains it",
    ]
    # a killed holder's lease ends when the server that held it stopped
    killed = section(INFO, 1.0, None, 1)
    assert only_sections(killed, section(OK, 1.6, 1.7, 2, pid=8), excuses=erased) == []


def test_a_failover_excuses_told_holders_at_it_during_it() -> None:
    """Granted on the old master during a switch-over, told on leaving: the contract."""
    failover = (Excuse(FAILOVER, 0, 1.0, 3.0),)
    during = section(TOLD, 1.5, 1.6, 1, began=1.4)  # began after the failover began
    other = section(OK, 1.55, 1.7, 2, pid=8)  # on the new master, at once
    assert only_sections(during, other, excuses=failover) == []
    assert only_sections(during, other) == [
        "lock: a holder was told LeaseLost with no pause or lost lease",
        "lock: two holders overlapped, with no pause or restart that explains it",
    ]
    # a holder done before the failover began, or one that began after it ended
    before, after = section(TOLD, 0.5, 0.9, 1, began=0.4), section(TOLD, 3.2, 3.3, 1, began=3.1)
    for holder in (before, after):
        assert only_sections(holder, excuses=failover) == [
            "lock: a holder was told LeaseLost with no pause or lost lease"
        ]
    # a holder granted well before the failover, or after it settled: its lease was on the
    # new master, so the other must have waited a lease
    early = section(TOLD, -2.5, 4.0, 1, began=-2.6)
    late = section(TOLD, 4.2, 8.0, 1, began=2.9)
    for holder, entering in ((early, 1.2), (early, 2.5), (late, 5.0)):
        assert only_sections(
            holder, section(OK, entering, entering + 0.1, 2, pid=8), excuses=failover, lease=3.0
        ) == ["lock: two holders overlapped, with no pause or restart that explains it"]
    for holder, entering in ((early, 2.95), (late, 7.2)):  # a lease after: fine
        assert (
            only_sections(
                holder,
                section(OK, entering, entering + 0.02, 2, pid=8),
                excuses=failover,
                lease=3.0,
            )
            == []
        )
    # never an overlap with an acknowledged holder, and never a token going backwards
    assert only_sections(section(OK, 1.5, 1.6, 1), other, excuses=failover) == [
        "lock: two holders overlapped, neither told"
    ]
    assert only_sections(during, section(OK, 1.7, 1.8, 0, pid=8), excuses=failover) == [
        "lock: a later holder got a token no larger"
    ]


def test_fencing_tokens_grow_in_the_order_of_grants() -> None:
    assert only_sections(section(OK, 1.0, 1.1, 10), section(OK, 1.2, 1.3, 9, pid=8)) == [
        "lock: a later holder got a token no larger"
    ]
    assert only_sections(section(OK, 1.0, 1.1, 10), section(OK, 1.2, 1.3, 10, pid=8)) == [
        "lock: a later holder got a token no larger"
    ]
    # grants noted within SLACK of each other: their order is not certain
    assert only_sections(section(OK, 1.0, 1.01, 10), section(OK, 1.05, 1.1, 9, pid=8)) == []


def test_the_guarded_counter_is_bounded() -> None:
    sections = (section(OK, 1.0, 1.1, 1), section(OK, 2.0, 2.1, 2), section(INFO, 3.0, 3.1, 3))
    assert only_sections(*sections, guarded=3) == []
    assert only_sections(*sections, guarded=2) == []
    assert only_sections(*sections, guarded=1) == [
        "lock: the guarded counter is 1, for 2 sections (0 told, 1 unknown, 0 overlapping"
        " a stale holder)"
    ]
    assert only_sections(*sections, guarded=4)[0].startswith("lock: the guarded counter is 4")
    # erased with the rest by a restart of a Redis that kept nothing: the upper bound only
    erased = (Excuse(ERASED, 0, 5.0, 5.1),)
    assert only_sections(*sections, guarded=0, excuses=erased) == []
    assert only_sections(*sections, guarded=4, excuses=erased) != []
    # ... and the sections after it count again (a failover may lose a plain write too)
    for loss in (Excuse(ERASED, 0, 1.5, 1.6), Excuse(FAILOVER, 0, 1.5, 1.6)):
        assert only_sections(*sections, guarded=1, excuses=(loss,)) == []
        assert only_sections(*sections, guarded=0, excuses=(loss,))[0].startswith(
            "lock: the guarded counter is 0"
        )


def test_a_told_holder_excuses_only_the_increments_it_overlapped() -> None:
    """Its stale write undoes those made while it held: not every increment of the run."""
    history = (
        section(OK, 0.5, 0.6, 1, pid=8),
        section(TOLD, 1.0, 4.0, 2),
        section(OK, 2.5, 2.6, 3, pid=9),
        section(OK, 5.0, 5.1, 4, pid=9),
    )
    pause = (Excuse(PAUSE, 7, 1.05, 3.5),)
    assert only_sections(*history, guarded=4, excuses=pause) == []
    assert only_sections(*history, guarded=2, excuses=pause) == []  # the one in its window
    assert only_sections(*history, guarded=1, excuses=pause) == [
        "lock: the guarded counter is 1, for 3 sections (1 told, 0 unknown, 1 overlapping"
        " a stale holder)"
    ]
    assert only_sections(*history, guarded=5, excuses=pause)[0].startswith(
        "lock: the guarded counter is 5"
    )


# -- memo, and the cap on listed anomalies ------------------------------------------


def test_a_value_older_than_a_returned_invalidation_is_reported() -> None:
    history, final = clean()
    history += [
        op("invalidate", OK, 5, at=2.0),  # ended at 2.1
        op("invalidate", INFO, 9, at=2.0),  # unknown: proves nothing
        op("memo", OK, 4, at=2.05),  # began before it returned: may be older
        op("memo", OK, 5, at=2.2),
        op("memo", OK, 6, at=2.3),
        op("memo", OK, 4, at=2.4),  # began after: must be 5 or later
    ]
    assert whats(history, final) == [
        "memo: got version 4 after the invalidation of version 5 had returned"
    ]


def test_limit_anomalies() -> None:
    """A limit that let one hit too many through, or refused one too early, is reported."""
    history, final = clean()
    history += [
        op("limit", OK, [True, 7], arg="fixed:1", at=8.0),  # one past the limit
        op("limit", OK, [False, 7], arg="sliding:1", at=8.0),  # after 1 through, none unknown
    ]
    too_many = f"limit: fixed:1 let {LIMIT + 1} hits through, more than {LIMIT}"
    too_soon = (
        "limit: sliding:1 refused a hit when 1 hits (unknown ones included) had begun before"
        f" it ended, fewer than {LIMIT}"
    )
    assert whats(history, final) == [too_many, too_soon]
    # order: hits let through after a refusal do not make up for it
    late = [op("limit", OK, [True, 7], arg="sliding:1", at=9 + i / 10) for i in range(LIMIT - 1)]
    assert whats(history + late, final) == [too_many, too_soon]
    # memory pressure evicted the key: its window may have been lost once
    evicted = run(evicted=frozenset({"fixed:1"}))
    assert whats(history, final, evicted) == [too_soon]
    # the sliding window counter across midnight: the previous day's count weighs in
    history += [op("limit", OK, [False, 8], arg="sliding:1", at=9.0)]
    assert whats(history, final) == [too_many]


def expire(n: int, at: float, before: Any, after: Any = "same", outcome: str = OK) -> Op:
    """Thread 7.x.0's ``expire`` number ``n`` of key 1 at ``at`` (wall clock), its reads."""
    arg = f"1|7.x.0.{n}"
    times = [at, at + 0.001, at + 0.002, at + 0.003]
    value = {"before": before, "after": arg if after == "same" else after, "times": times}
    done = op("expire", outcome, value, arg=arg, at=at)
    done.ended = at + 0.004
    return done


def only_expiring(*ops: Op) -> list[str]:
    history, final = clean()
    the_run = run(kinds=(*KINDS, "expire"))
    return whats([*history, *ops], final, the_run)


def test_expire_anomalies() -> None:
    """A read of an expiring key: nothing, or a value that may be there and has not expired."""
    first, second = "1|7.x.0.1", "1|7.x.0.2"
    live = EXPIRE_SECONDS - 1  # (a write's value certainly lives this long)
    # exact: missing at first, found while live, gone once expired, unknown outcomes
    exact = only_expiring(
        expire(1, 0.0, None),
        expire(2, live - 0.5, first),  # live: must be found
        expire(3, live - 0.4, second),
        expire(4, 0.5 + EXPIRE_SECONDS, None),  # may have expired: either
        expire(5, 0.6 + EXPIRE_SECONDS, "1|7.x.0.4", outcome=INFO),
        expire(6, 0.7 + EXPIRE_SECONDS, "1|7.x.0.5"),  # an unknown write may be there
    )
    assert exact == []
    lost = only_expiring(expire(1, 0.0, None), expire(2, live - 0.5, None))
    assert len(lost) == 1 and "s after the write of '1|7.x.0.1' began, before it" in lost[0]
    served = only_expiring(expire(1, 0.0, None), expire(2, EXPIRE_SECONDS + 0.1, first))
    assert len(served) == 1 and "past its timeout" in served[0]
    nowhere = only_expiring(expire(1, 0.0, "1|7.x.9.1"))
    assert len(nowhere) == 1 and "which no write of this key since" in nowhere[0]
    # an older value came back after a newer write was acknowledged
    older = only_expiring(expire(1, 0.0, None), expire(2, 0.1, first), expire(3, 0.2, first))
    assert "which no write of this key since" in older[0]
    wrong = only_expiring(expire(1, 0.0, None, after="1|7.x.0.0"))
    assert len(wrong) == 1 and "right after writing" in wrong[0]
    # found nothing right after writing it: only the FileSystemCache sweep may do that
    history, final = clean()
    missing = [*history, expire(1, 0.0, None, after=None)]
    found = whats(missing, final, run(kinds=(*KINDS, "expire")))
    assert len(found) == 1 and "found nothing right after writing" in found[0]
    assert whats(missing, final, run(kinds=(*KINDS, "expire"), misses_aside=True)) == []
    # a step of the wall clock between the write and the read: when is not judged, what is
    history, final = clean()
    steps = run(kinds=(*KINDS, "expire"), clock_steps=(live - 0.6,))
    late = [expire(1, 0.0, None), expire(2, EXPIRE_SECONDS + 0.1, first)]
    gone = [expire(1, 0.0, None), expire(2, live - 0.5, None)]
    assert whats([*history, *late], final, steps) == []
    assert whats([*history, *gone], final, steps) == []
    assert whats([*history, expire(1, 0.0, "1|7.x.9.1")], final, steps) == [nowhere[0]]
    before = run(kinds=(*KINDS, "expire"), clock_steps=(-1.0, EXPIRE_SECONDS + 1))
    assert whats([*history, *late], final, before) == served  # (stepped outside: judged)


def test_single_flight_anomalies() -> None:
    """Two computations of one key at once are reported, unless the first one's lease may
    have lapsed; a run that noted no computation proves nothing."""
    history, final = clean()
    a = Computation("k1", 7, 1.0, 1.02)
    assert whats(history, final, run(computations=())) == [
        "single flight: no computation was noted (nothing to judge)"
    ]
    apart = (a, Computation("k1", 8, 1.03, 1.05), Computation("k2", 8, 1.01, 1.02))
    assert whats(history, final, run(computations=apart)) == []
    at_once = (a, Computation("k1", 8, 1.01, 1.03))
    assert whats(history, final, run(computations=at_once, lease=None)) == [
        "single flight: two computations of 'k1' ran at once (pid 7 [1.000, 1.020],"
        " pid 8 from 1.010)"
    ]
    # a computer killed inside: it held until its death
    killed = Computation("k1", 7, 1.0, None)
    late = Computation("k1", 8, 2.5, 2.6)
    deaths = {7: 2.0}
    assert whats(history, final, run(computations=(killed, late), deaths=deaths)) == []
    assert whats(history, final, run(computations=(killed, late), ended=3.0)) != []
    # with a lease: a pause of the computer, and the other began once the lease may have
    # lapsed (two thirds of a lease after the stop, less SLACK), or before that
    long = Computation("k1", 7, 1.0, 3.0)
    paused = (Excuse(PAUSE, 7, 1.1, 2.9),)
    after = (long, Computation("k1", 8, 1.8, 1.9))
    before = (long, Computation("k1", 8, 1.5, 1.6))
    assert whats(history, final, run(computations=after, excuses=paused)) == []
    assert whats(history, final, run(computations=before, excuses=paused)) != []
    assert whats(history, final, run(computations=after, excuses=paused, lease=None))
    # a computer stopped after it took its lease and before it noted its start: it notes it
    # on resuming, after the one that took the lapsed lease meanwhile (noted first)
    took_over = Computation("k1", 8, 2.0, 2.1)
    resumed = Computation("k1", 7, 2.05, 2.2)
    stopped = (Excuse(PAUSE, 7, 1.0, 2.0),)
    noted_late = (took_over, resumed)
    assert whats(history, final, run(computations=noted_late, excuses=stopped)) == []
    assert whats(history, final, run(computations=noted_late)) != []  # no pause: two at once
    resumed_later = Computation("k1", 7, 2.09, 2.2)  # noted well after it resumed at 1.95
    stopped_earlier = (Excuse(PAUSE, 7, 1.0, 1.95),)
    assert whats(
        history, final, run(computations=(took_over, resumed_later), excuses=stopped_earlier)
    )
    early = Computation("k1", 8, 1.5, 2.1)  # took over before the lease could lapse
    assert whats(history, final, run(computations=(early, resumed), excuses=stopped))
    # a failover that settled after its COMPUTE stripe was granted and before its computation
    # was noted (its reads waited on it): the lease, granted meanwhile, may have been lost
    failed_over = (Excuse(FAILOVER, 0, 0.5, 0.95),)
    granted_during = Computation("k1", 7, 1.0, 1.5, granted=0.9)
    overtaken = Computation("k1", 8, 1.2, 1.3)
    assert (
        whats(history, final, run(computations=(granted_during, overtaken), excuses=failed_over))
        == []
    )
    granted_after = dataclasses.replace(granted_during, granted=0.97)  # its grant came after
    assert whats(history, final, run(computations=(granted_after, overtaken), excuses=failed_over))
    not_known = dataclasses.replace(granted_during, granted=None)  # not noted: from its note
    assert whats(history, final, run(computations=(not_known, overtaken), excuses=failed_over))


def test_many_anomalies_of_one_rule_are_capped() -> None:
    history, final = clean()
    history += [op("incr", OK, 100 + i, at=0.6) for i in range(25)]
    found = whats(history, {**final, "counter": 28})
    assert_finds(found, "counter: and ")
    assert len(found) <= 21


# -- the list of anomaly kinds, and the history files -------------------------------

#: Every anomaly the checker can report (the start of its text), and the test that shows it.
ANOMALY_KINDS = {
    "progress: no workload was configured": test_no_configured_workload_fails,
    "progress: no client ran": test_an_empty_history_fails,
    "operations of {kind!r}, never configured": test_a_kind_never_configured_fails,
    "refused: ": test_a_refused_spelling_fails_though_another_made_progress,
    ") exited with": test_a_crashed_process_fails_unless_the_nemesis_killed_it,
    "acknowledged {kind} operations in all": test_a_kind_that_is_absent_fails_its_minimum,
    "acknowledged {kind} operations on": test_a_kind_that_is_absent_fails_its_minimum,
    ") ran {life:.1f} s": test_a_missing_process_fails,
    "was handed out {count} times": test_counter_anomalies,
    "is outside 1..": test_counter_anomalies,
    "counter: final": test_counter_anomalies,
    "was handed out after": test_counter_anomalies,
    "is in the list but was never appended": test_append_anomalies,
    "is in the list {count} times": test_append_anomalies,
    "failed but is in the list": test_append_anomalies,
    ": acknowledged {item!r} is missing": test_transfer_anomalies,
    "in the list, though it": test_append_anomalies,
    "money: the balances add up to": test_money_anomalies,
    "but the {len(ledger)} transfers in the": test_money_anomalies,
    "by a lock with no lease": test_a_told_holder_needs_a_pause_or_restart_that_struck_it,
    "with no pause or lost lease": test_a_told_holder_needs_a_pause_or_restart_that_struck_it,
    "two holders overlapped, neither told": test_overlapping_holders_neither_told,
    "with no pause or restart that explains it": (
        test_an_overlap_is_excused_only_by_a_pause_of_that_holder_a_lease_before
    ),
    "a later holder got a token no larger": test_fencing_tokens_grow_in_the_order_of_grants,
    "the guarded counter is": test_the_guarded_counter_is_bounded,
    "memo: got version": test_a_value_older_than_a_returned_invalidation_is_reported,
    "more like these": test_many_anomalies_of_one_rule_are_capped,
    "hits through, more than": test_limit_anomalies,
    "refused a hit when": test_limit_anomalies,
    "single flight: no computation was noted": test_single_flight_anomalies,
    "which no write of this key since": test_expire_anomalies,
    "served {before!r}": test_expire_anomalies,
    "s after the": test_expire_anomalies,
    "right after writing": test_expire_anomalies,
    "found nothing right after": test_expire_anomalies,
    "single flight: two computations of": test_single_flight_anomalies,
}


def test_every_anomaly_kind_has_a_test() -> None:
    """Each anomaly text the checker can make is listed above with its test, and vice versa."""
    source = (Path(__file__).parent / "checker.py").read_text()
    texts = re.findall(r'(?:Anomaly\(|what = )\s*f?"([^"]*)"', source)
    assert len(texts) >= len(ANOMALY_KINDS)
    for text in texts:
        assert any(key in text for key in ANOMALY_KINDS), f"no test listed for {text!r}"
    for key in ANOMALY_KINDS:
        assert any(key in text for text in texts), f"{key!r} is no longer in the checker"
    # the only Anomaly made from something else than a literal: one of the "what =" above
    assert re.findall(r"Anomaly\((?!\s*f?\")(\w*)", source) == ["what"]


def test_notes_survive_a_kill_and_join_their_operation(tmp_path: Path) -> None:
    """A holder's grant note is on disk before its body runs: a killed holder still counts."""
    recorder = Recorder(tmp_path)
    with recorder.op("section") as pending:
        pending.note({"granted": 1.0, "token": 5, "pid": 7})
        with open(tmp_path / "cut.jsonl", "w") as cut:  # a line a kill cut in two
            cut.write('{"id": "x", "kind"')
    loaded = [o for o in load(tmp_path) if o.kind == "section"]
    assert loaded[0].extra["notes"] == {"granted": 1.0, "token": 5, "pid": 7}
    assert loaded[0].client == loaded[0].id.split("-")[0]
    http = [Op("c1-1", "section", client="c1")]
    (tmp_path / "notes-99.jsonl").write_text(
        '{"id": "c1-1", "note": {"granted": 2.0, "token": 6, "pid": 99}}\n'
        '{"id": "c1-1", "note": {"left": 2.5}}\n'
    )
    attach_notes(http, tmp_path)
    assert http[0].extra["notes"] == {"granted": 2.0, "token": 6, "pid": 99, "left": 2.5}


def _threads_then_sleep() -> None:
    import threading
    import time

    def spin() -> None:
        while True:
            pass

    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()
    time.sleep(60)


def test_a_dying_client_is_no_victim() -> None:
    """A client killed while its threads still exit (its main thread ``Z``, ``is_alive()``
    still True until the last thread is gone) is never a fault's victim: a pause aimed at
    it stops nothing (CI saw ``pause: pid ... not seen stopped`` right after a kill)."""
    import os
    import signal
    import time

    from .runner import DEAD, FORK, Started, Target, _state

    for _ in range(20):  # the window is short: several tries, each asserting
        proc = FORK.Process(target=_threads_then_sleep)
        proc.start()
        assert proc.pid is not None
        target = Target(procs=[Started(proc, "s", time.monotonic())])
        assert target.victims() == [proc.pid]
        os.kill(proc.pid, signal.SIGKILL)  # not through the nemesis: not in target.kills
        while _state(proc.pid) not in DEAD:
            time.sleep(0.0005)
        assert target.victims() == []
        proc.join(30)


def test_a_fault_the_schedule_never_reached_is_injected_in_overtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slow faults can use up a short run's schedule (CI: a switch-over of 11.2 s and a
    failover of 14.5 s left no time for the pause, and the run failed for a fault never
    injected): every fault asked for is still injected once, after the run's length."""
    import time

    from . import runner

    calls: list[tuple[str, float]] = []

    def slow(target: runner.Target, pick: float) -> tuple[bool, str]:
        calls.append(("slow", time.monotonic()))
        time.sleep(1.0)
        return True, "took a second"

    def quick(target: runner.Target, pick: float) -> tuple[bool, str]:
        calls.append(("quick", time.monotonic()))
        return True, "at once"

    monkeypatch.setitem(runner.FAULTS, "slow", slow)
    monkeypatch.setitem(runner.FAULTS, "quick", quick)
    faults = ["slow", "quick"]
    seed = next(s for s in range(100) if runner.schedule(s, faults, 1, 0.3)[0].fault == "slow")
    target = runner.Target(seed=seed)
    began = time.monotonic()
    runner.nemesis(target, faults, 1.0, 0.3)
    assert [name for name, _ in calls] == faults
    assert calls[1][1] >= began + 1.0  # after the run's length: in overtime
    assert [(e.fault, e.effective) for e in target.effects] == [("slow", True), ("quick", True)]


def test_computations_are_read_back_with_when_their_stripe_was_granted(tmp_path: Path) -> None:
    """A computation's note keeps when its COMPUTE stripe was granted (one not noted has
    none), and one killed inside has no end."""
    from .history import load_computations
    from .workloads import Computations

    notes = Computations()
    notes.folder = str(tmp_path)
    notes.write("k1", 2.0, granted=1.5)
    notes.write("k1", 2.0, 2.1, 1.5)
    notes.write("k2", 3.0)  # its grant not noted
    notes.write("k2", 3.0, 3.2)
    notes.write("k3", 4.0, granted=3.9)  # killed inside
    found = load_computations(tmp_path)
    assert [(c.key, c.began, c.ended, c.granted, c.held_from) for c in found] == [
        ("k1", 2.0, 2.1, 1.5, 1.5),
        ("k2", 3.0, 3.2, None, 3.0),
        ("k3", 4.0, None, 3.9, 3.9),
    ]


def test_a_master_switch_no_fault_ordered_is_excused_and_shown() -> None:
    """The sentinels may fail a loaded master over on their own (CI: a second replica
    promoted a second after the nemesis's failover settled): each switch they made is a
    failover excuse of its own, from ``down_after`` before the first sign its old master
    failed to a second after that master was made a replica (or after the switch); one
    outside the nemesis's own failover windows is an effect of its own; the watch must
    have heard a switch in each failover and stall of the nemesis, and a deaf one says so."""
    from .runner import SentinelWatch, Target, _excuse_switches

    watch = SentinelWatch.__new__(SentinelWatch)  # (its events, without sentinels to hear)
    watch._lock = threading.Lock()
    watch.deaf = []
    watch.heard = [
        (10.0, "+sdown", "1: master mymaster 127.0.0.1 7001"),
        (11.0, "+switch-master", "1: mymaster 127.0.0.1 7001 127.0.0.1 7002"),
        (11.1, "+switch-master", "2: mymaster 127.0.0.1 7001 127.0.0.1 7002"),  # (the same)
        (12.5, "+sdown", "2: master mymaster 127.0.0.1 7002"),  # the promoted one, judged down
        (13.6, "+switch-master", "2: mymaster 127.0.0.1 7002 127.0.0.1 7003"),
        (13.7, "+switch-master", "1: mymaster 127.0.0.1 7002 127.0.0.1 7003"),
        (23.0, "+convert-to-slave", "3: slave 127.0.0.1:7002 127.0.0.1 7002 @ mymaster"),
        (60.0, "+sdown", "1: master mymaster 127.0.0.1 7003"),  # slow a moment: no switch
    ]
    target = Target()
    target.excuses.append(Excuse(FAILOVER, 0, 9.0, 12.0))  # the nemesis's own failover
    target.stalls.append((12.0, 25.0))  # and a stall (it excuses nothing itself)
    _excuse_switches(target, watch, 1.0)
    assert [(e.kind, e.start, e.end) for e in target.excuses[1:]] == [
        (FAILOVER, 9.0, 12.0),
        (FAILOVER, 11.5, 24.0),
    ]
    assert [(e.fault, e.effective, e.at) for e in target.effects] == [
        ("heard switches", True, target.effects[0].at),
        ("unplanned failover", True, 13.6),
    ]
    unheard = Target()  # a stall in which no switch was heard: the watch is seen not to work
    unheard.excuses.append(Excuse(FAILOVER, 0, 9.0, 12.0))
    unheard.stalls.append((30.0, 40.0))
    _excuse_switches(unheard, watch, 1.0)
    assert [(e.fault, e.effective) for e in unheard.effects][:1] == [("heard switches", False)]
    watch.heard, watch.deaf = [], ["sentinel 1: ConnectionError()"]
    deaf = Target()
    deaf.excuses.append(Excuse(FAILOVER, 0, 9.0, 12.0))
    _excuse_switches(deaf, watch, 1.0)
    assert [(e.fault, e.effective) for e in deaf.effects] == [
        ("heard switches", False),
        ("heard switches", False),
    ]


def test_a_cluster_failover_is_read_from_the_nodes_logs(tmp_path: Path) -> None:
    """Each election a Cluster node won, as its log tells it, is a failover excuse of its own
    (from the node timeout and half a second before the last node marked failing in the 5 s
    before, to 2 s after); one outside the nemesis's own windows is shown as an unplanned
    failover, and the reading must find an election in each failover and stall of the
    nemesis's."""
    import time
    from types import SimpleNamespace

    from .runner import Target, _excuse_elections, log_events

    def stamp(at: float) -> str:  # (a monotonic time as Redis writes it in its log)
        wall = at + time.time() - time.monotonic()
        return (
            time.strftime("%d %b %Y %H:%M:%S", time.localtime(wall))
            + f".{int(wall % 1 * 1000):03d}"
        )

    now = time.monotonic()
    lines = {
        7001: [
            f"11:M {stamp(now + 1.0)} * Marking node abc (127.0.0.1:7002) as failing (quorum).",
            f"11:M {stamp(now + 12.0)} * Marking node def (127.0.0.1:7004) as failing (quorum).",
        ],
        7003: [
            f"13:S {stamp(now + 2.0)} * Failover election won: I'm the new primary.",
            f"13:S {stamp(now + 13.0)} * Failover election won: I'm the new primary.",
            f"13:M {stamp(now + 14.0)} * Clear FAIL state for node def: replica is reachable.",
        ],
    }
    nodes = []
    for port, text in lines.items():
        (tmp_path / f"server-{port}.log").write_text("\n".join(["garbage", *text]) + "\n")
        nodes.append(SimpleNamespace(directory=tmp_path, port=port))
    assert [round(at - now, 2) for at, _ in log_events(tmp_path / "server-7003.log", now)] == [
        2.0, 13.0, 14.0
    ]  # fmt: skip
    target = Target()
    target.excuses.append(Excuse(FAILOVER, 0, now + 0.5, now + 3.0))  # the nemesis's failover
    _excuse_elections(target, SimpleNamespace(nodes=nodes), now)  # type: ignore[arg-type]
    spans = [(round(e.start - now, 2), round(e.end - now, 2)) for e in target.excuses[1:]]
    assert spans == [(-0.5, 4.0), (10.5, 15.0)]
    assert [(e.fault, e.effective) for e in target.effects] == [
        ("heard elections", True),
        ("unplanned failover", True),
    ]
    assert round(target.effects[1].at - now, 2) == 13.0


def test_kills_go_on_in_overtime_until_one_lands_inside_a_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A case requires a kill -9 inside a section: a run whose kills found no holder (CI: a
    Sentinel run's one kill) kills again after its length, until one does (3 at most)."""
    from . import runner

    told = iter([False, False, True, True, True])
    calls: list[bool] = []

    def kill(target: runner.Target, pick: float) -> tuple[bool, str]:
        inside = next(told)
        calls.append(inside)
        return True, "pid 1 died" + (" inside a section" if inside else "")

    monkeypatch.setitem(runner.FAULTS, "kill9", kill)
    target = runner.Target(seed=1)
    runner.nemesis(target, ["kill9"], 0.15, 0.1)
    assert calls == [False, False, True]  # (1 in the run, then 2 in overtime: no more)
