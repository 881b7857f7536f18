"""Redis Cluster under load: a master killed, and slots migrated, while the workloads run.

Three masters with a replica each (:mod:`tests.clustertopology`). Three
processes ``incr`` one key, two take ``lock(cache, "L")`` for 10 ms at a time
and two move money between two keys in ``transaction`` s, through
Flask-Caching's ``RedisClusterCache`` (the keys share the ``{t}`` hash tag, so
a transaction's keys and their leases live in one slot). A few seconds in:

- **kill**: the master that serves ``{t}`` is killed (``kill -9``); its
  replica must be promoted and service resume, with no acknowledged write lost
  (``CACHEKIT_REDIS_DURABLE_WRITES = 1``), no untold overlap of lock holders,
  fencing tokens growing;
- **migrate**: the slot of ``{t}`` and the slot of lock "L"'s lease move to
  another master key by key, as ``redis-cli --cluster reshard`` moves them
  (``CLUSTER SETSLOT ... IMPORTING/MIGRATING``, ``MIGRATE``, ``SETSLOT ...
  NODE``), slowly, so that operations meet ``MOVED`` and ``ASK``: every one
  completes exactly or raises a cachekit error with nothing written, and
  nothing is lost.

The checks are :func:`tests.failover.check`'s; a run that made too little
progress before or after the fault fails as well.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from . import failover
from .clustertopology import NODE_TIMEOUT, ClusterTopology, key_slot, lease_slot
from .conftest import use_settings
from .redisserver import RedisServer

FORK = mp.get_context("fork")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BEFORE = 4.0
RUN = 16.0
#: How long service may pause past the cluster's node timeout (a busy 2-core machine).
RESUME_SLACK = 4.0
#: And, after a kill, for the restarted node to rejoin and sync as the new master's replica.
REJOIN = 4.0
PREFIX_TAG = "{t}"


def final(where: str, prefix: str) -> tuple[int, tuple[int, int]]:
    host, port = where.split(",")[0].split(":")
    client = RedisCluster(host=host, port=int(port), socket_timeout=5)
    try:
        counter = int(client.get(f"{prefix}n") or 0)
        balances = (int(client.get(f"{prefix}a") or 0), int(client.get(f"{prefix}b") or 0))
    finally:
        client.close()
    return counter, balances


@pytest.mark.parametrize(("fault", "durable"), [("kill", 1), ("migrate", 0)])
def test_cluster_fault_under_load_loses_nothing_and_keeps_locks_exclusive(
    cluster: ClusterTopology,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    durable: int,
) -> None:
    """A migration loses nothing with the defaults; a killed master, with durable writes."""
    use_settings(monkeypatch, durable_writes=durable, redis_timeout=2.0)
    prefix = f"{PREFIX_TAG}{uuid.uuid4().hex[:6]}:"
    where = cluster.startup
    start = time.time()
    until = start + RUN
    jobs = [
        *((failover.count, tmp_path / f"counter{n}") for n in range(3)),
        *((failover.take_turns, tmp_path / f"holder{n}") for n in range(2)),
        *((failover.transfer, tmp_path / f"mover{n}") for n in range(2)),
    ]
    workers = [
        FORK.Process(target=job, args=("cluster", where, prefix, until, str(path)))
        for job, path in jobs
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(max(0.0, start + BEFORE - time.time()))
        fault_at = time.time()
        if fault == "kill":
            victim: RedisServer = cluster.master_of(f"{prefix}n")
            victim.kill()
            # Its replica takes over; the shard has no replica left to confirm a durable
            # write until the victim, restarted as a supervisor would, rejoins as one.
            cluster.wait_promoted(f"{prefix}n", victim, wait=30)
            victim.start()
        else:
            before = cluster.master_of(f"{prefix}n")
            cluster.migrate(key_slot(f"{prefix}n"), pause=0.2)
            lease = lease_slot(failover.open_cache("cluster", where, prefix), "L")
            cluster.migrate(lease, pause=0.2)
            assert cluster.master_of(f"{prefix}n") is not before  # the fault took effect
        for worker in workers:
            worker.join(RUN + 60)
    finally:
        for worker in workers:
            if worker.is_alive():
                assert worker.pid is not None
                os.kill(worker.pid, 9)
                worker.join(5)
    assert all(worker.exitcode == 0 for worker in workers), [w.exitcode for w in workers]
    counter, balances = final(cluster.startup, prefix)
    history = failover.read([path for _, path in jobs])
    print(
        f"{fault}: {len(history.increments)} increments, {len(history.sections)} sections"
        f" ({sum(s.told for s in history.sections)} told), {len(history.transfers)} transfers;"
        f" errors {history.errors}; counter {counter}, balances {balances}"
    )
    problems = failover.check(
        history,
        fault_at=fault_at,
        until=until,
        counter=counter,
        balances=balances,
        durable=True,
        resume_within=NODE_TIMEOUT / 1000 + RESUME_SLACK + (REJOIN if fault == "kill" else 0),
    )
    assert not problems, "\n".join(problems)
