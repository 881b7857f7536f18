"""The Lua scripts against a real Redis, and the commit's argument encoder pinned to its parser.

``encode_commit`` (Python) and ``commit.lua`` (Lua) must agree on one layout;
hypothesis draws commits (leases held, lost or expired; values read as they
are, changed, or missing; sets with each kind of ttl, deletes), runs them
through both, and compares the outcome and every key with a model of what a
commit promises.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachekit.redis.argv import Read, Write, encode_commit
from cachekit.redis.scripts import Scripts

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Any:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def server_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


LEASES = st.lists(st.sampled_from(["ours", "ours-expired", "other", "missing"]), max_size=3)
VALUES = st.lists(
    st.tuples(
        st.sampled_from([None, b"1", b"!x"]),  # what is stored now
        st.sampled_from(["unchecked", "as-stored", "changed", "claimed-missing"]),
        st.one_of(st.none(), st.tuples(st.binary(max_size=8), st.sampled_from(["", "0", "60000"]))),
    ),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(leases=LEASES, values=VALUES)
def test_commit_does_what_its_arguments_say(client: Any, leases: list[str], values: Any) -> None:
    scripts = Scripts(client)
    run = uuid.uuid4().hex[:8]
    now = server_ms(client)
    fenced = []
    for i, state in enumerate(leases):
        key, token = f"t:{run}:lease{i}", f"tok{i}"
        if state != "missing":
            holder = token if state.startswith("ours") else "someone-else"
            expiry = now - 1000 if state == "ours-expired" else now + 60000
            client.set(key, f"{expiry} {holder}")
        fenced.append((key, token))
    keys, writes, deletes, read = [], {}, set(), {}
    for i, (stored, claim, op) in enumerate(values):
        key = f"t:{run}:v{i}"
        keys.append(key)
        if stored is not None:
            client.set(key, stored, px=90000)  # a TTL, to see what each ttl argument does to it
        if claim == "as-stored":
            read[key] = None if stored is None else Read(True, stored)
        elif claim == "changed":
            read[key] = Read(True, b"something else")
        elif claim == "claimed-missing":
            read[key] = None
        if op is None:
            deletes.add(key)
        else:
            writes[key] = Write(op[0], op[1])
    lua_keys, args = encode_commit(fenced, keys, writes, deletes, read)
    outcome = [int(part) for part in scripts.commit(keys=lua_keys, args=args)]

    # The model: a lease not this commit's (missing or another's; an expired one that still
    # holds the token is fine) stops everything; then the first value changed since read.
    if any(state in ("other", "missing") for state in leases):
        expected = [0]
    else:
        expected = [1]
        for i, (stored, claim, _) in enumerate(values):
            changed = (claim == "changed") or (claim == "claimed-missing" and stored is not None)
            if changed:
                expected = [2, i + 1]
                break
    assert outcome == expected
    for i, (stored, _, op) in enumerate(values):
        key = keys[i]
        ttl = client.pttl(key)
        if expected != [1]:
            assert client.get(key) == stored  # nothing written
        elif op is None:
            assert client.get(key) is None
        else:
            assert client.get(key) == op[0]
            if op[1] == "0":
                assert ttl == -1
            elif op[1] == "60000":
                assert 0 < ttl <= 60000
            else:  # '' keeps the TTL the key had, none for a new key
                assert (ttl > 60000) if stored is not None else (ttl == -1)


def test_acquire_grants_waits_takes_over_and_fences(client: Any) -> None:
    scripts = Scripts(client)
    run = uuid.uuid4().hex[:8]
    lease, fence = f"t:{run}:lease", f"t:{run}:fence"
    granted, token = scripts.acquire(keys=[lease, fence], args=["a", 60000, ""])
    assert granted == 1 and token > time.time() * 1_000_000 - 60_000_000  # raised to the clock
    assert client.ttl(lease) == -1 and client.ttl(fence) == -1  # neither can be evicted
    assert scripts.acquire(keys=[lease, fence], args=["b", 60000, ""]) == [0, b"a"]
    granted, second = scripts.acquire(keys=[lease, fence], args=["b", 60000, "a"])  # a is dead
    assert granted == 1 and second > token
    assert scripts.renew(keys=[lease], args=[60000, "a"]) == [0]  # a lost it
    assert scripts.release(keys=[lease], args=["a"]) == 0
    assert scripts.held(keys=[lease], args=["b"]) == 1
    client.set(lease, f"{server_ms(client) - 1} b")  # b's lease ran out, no one took it
    assert scripts.held(keys=[lease], args=["b"]) == 0
    assert scripts.renew(keys=[lease], args=[60000, "b"]) == [1]  # still b's: renewed
    assert scripts.held(keys=[lease], args=["b"]) == 1
    client.set(lease, f"{server_ms(client) - 1} b")
    granted, third = scripts.acquire(keys=[lease, fence], args=["c", 60000, ""])
    assert granted == 1 and third > second
    assert scripts.release(keys=[lease], args=["c"]) == 1 and client.get(lease) is None
    client.delete(fence)  # the counter lost (a restart without persistence)
    granted, fourth = scripts.acquire(keys=[lease, fence], args=["d", 60000, ""])
    assert fourth > third
    client.set(lease, "an-old-format-token", px=60000)  # cachekit 0.1's lease: wait for its TTL
    assert scripts.acquire(keys=[lease], args=["e", 60000, ""]) == [0, b"an-old-format-token"]
