"""The fault suite: workloads across processes and gunicorn workers while faults strike.

Every run is checked exactly (:mod:`.checker`) and every anomaly printed with
the history around it; a run also fails if a client or spelling made too little
progress, or if a fault it asked for never took effect. ``make test`` runs each
case for ``NEMESIS_SECONDS`` (default 6); ``make nemesis`` runs them for longer.

Each case draws a random seed and prints it (``NEMESIS_SEED=<n>``); setting
``NEMESIS_SEED`` replays that seed's fault schedule.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cachelib import FileSystemCache

from ..clustertopology import ClusterTopology, key_slot, lease_slot
from ..conftest import use_settings
from ..netfaults import BlackholeProxy
from ..redisserver import RedisServer, SentinelTopology, in_ci, redis_binary
from ..server import get_ok, gunicorn
from .checker import Client, check, report, summary
from .history import Op
from .runner import Target, faketime_library, run_http, run_processes
from .workloads import KINDS, OPENING, open_cache

SECONDS = float(os.environ.get("NEMESIS_SECONDS", "6"))
LEASE = 1.5
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SECONDS * 6 + 120))]


KEYS = ("counter", "log", "acct:a", "acct:b", "transfers", "guarded")
#: The embedded stores' workloads: every kind, and keys that expire (and are swept).
EMBEDDED = (*KINDS, "expire")


def seed() -> int:
    """This case's seed: ``NEMESIS_SEED`` if set (a replay), else a random one; printed."""
    chosen = int(os.environ.get("NEMESIS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"NEMESIS_SEED={chosen}")
    return chosen


def final_state(spec: str) -> dict[str, Any]:
    cache = open_cache(spec)
    return {key: cache.get(key) for key in KEYS}


def verify(
    name: str,
    history: list[Op],
    target: Target,
    clients: list[Client],
    spec: str,
    wanted: list[str],
    out: Path,
    *,
    kinds: tuple[str, ...] = KINDS,
    http: bool = False,
    min_life: float = 2.0,
) -> None:
    """Check the run exactly: whole (every client and spelling made progress), exact, and
    every fault asked for injected and seen to take effect. ``min_life``: the seconds a
    client must live (stops and downtime left out) to be held to every kind."""
    misses_aside = "expire" in kinds and not spec.startswith(("lmdb:", "redis://"))
    run = target.run(
        kinds,
        clients,
        every_kind_per_client=not http,
        misses_aside=misses_aside,
        min_life=min_life,
    )
    anomalies = check(history, final_state(spec), 2 * OPENING, run)
    errors = Counter(str(op.value)[:90] for op in history if op.outcome not in ("ok", "told"))
    held = [
        {**(op.extra.get("notes") or {}), **(op.value if isinstance(op.value, dict) else {})}
        for op in history
        if op.kind == "section"
    ]
    figures = {
        "case": name,
        "seed": target.seed,
        "faults": target.counts(),
        "effects": [f"{e.at:.3f} {e.fault}: {e.detail}" for e in target.effects],
        "kills inside a section": sum(
            "granted" in h and "left" not in h and h.get("pid") in target.kills for h in held
        ),
        "holders killed": len(target.killed_holders),
        "holders paused": len(target.paused_holders),
        "told holders": sum(op.kind == "section" and op.outcome == "told" for op in history),
        "told why": Counter(
            str(op.value.get("why"))[:120]
            for op in history
            if op.kind == "section" and op.outcome == "told" and isinstance(op.value, dict)
        ).most_common(4),
        "computations": len(run.computations or ()),
        "outcomes": summary(history),
        "errors": dict(errors.most_common(8)),
    }
    (out / "nemesis-summary.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    replay = f"(replay with NEMESIS_SEED={target.seed})"
    assert not anomalies, f"{replay}\n{report(history, anomalies)}"
    missing = target.missing(wanted)
    # Faults aim at lock holders (:func:`.runner._aim`): some must have struck one.
    if "kill9" in wanted and not figures["kills inside a section"]:  # (the history's word)
        missing.append(f"fault 'kill9': no kill landed inside a section ({figures})")
    stopped = {str(pid) for pid in target.paused_holders}
    told = [op for op in history if op.kind == "section" and op.outcome == "told"]
    if target.run_lease() is not None and "pause" in wanted:  # stopped past its lease: told
        if not any(op.client in stopped or _pid_of(op) in stopped for op in told):
            missing.append("fault 'pause': no holder it stopped was told LeaseLost")
    assert not missing, f"{replay} faults that never took effect:\n" + "\n".join(missing)


def _pid_of(op: Op) -> str:
    """The pid that ran a section (a gunicorn worker's, for an HTTP client's operation)."""
    notes = op.extra.get("notes") or {}
    value = op.value if isinstance(op.value, dict) else {}
    return str(value.get("pid", notes.get("pid", "")))


@pytest.fixture
def nemesis_redis(tmp_path: Path) -> Any:
    """A durable Redis that evicts only keys with a TTL once past 16 MB."""
    server = RedisServer(
        tmp_path / "redis",
        binary=redis_binary(),
        durable=True,
        extra=("--maxmemory", "16mb", "--maxmemory-policy", "volatile-lru"),
    )
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    server.stop()


def test_processes_on_a_directory_spelled_four_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real" / "cache"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    specs = [str(real), str(tmp_path / "link"), str(tmp_path / "real" / ".." / "link"), str(real)]
    # Files that expire a second into the run, so that its sweeps surely find some (a short
    # run's own expiring keys are rewritten or still live when the sweeps pass their names).
    seeded = FileSystemCache(str(real), threshold=0)
    for n in range(200):
        seeded.set(f"expiring:seed:{n}", n, timeout=1)
    wanted = ["kill9", "pause"]
    history, target, clients = run_processes(
        specs, tmp_path / "history", SECONDS, wanted, kinds=EMBEDDED, seed=seed()
    )
    verify(
        "processes/FileSystemCache",
        history,
        target,
        clients,
        str(real),
        wanted,
        tmp_path,
        kinds=EMBEDDED,
    )
    swept = sum(op.value.get("swept", 0) for op in history if op.kind == "expire" and op.value)
    print(f"the sweep deleted {swept} expired files")
    assert swept > 0  # (the expire workload's keys, and the memo's, expired meanwhile)


def test_processes_on_lmdb_spelled_four_ways(tmp_path: Path) -> None:
    """kill -9 at any point (inside a write transaction too) and SIGSTOP, on LMDBCache."""
    real = tmp_path / "real" / "lmdb"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    spellings = [real, tmp_path / "link", tmp_path / "real" / ".." / "link", real]
    specs = [f"lmdb:{path}" for path in spellings]
    wanted = ["kill9", "pause"]
    history, target, clients = run_processes(
        specs, tmp_path / "history", SECONDS, wanted, kinds=EMBEDDED, seed=seed()
    )
    spec = f"lmdb:{real}"
    verify("processes/LMDBCache", history, target, clients, spec, wanted, tmp_path, kinds=EMBEDDED)


def embedded_spec(folder: Path, store: str) -> str:
    """A fresh private directory for ``store`` (FileSystemCache or LMDBCache), as a spec."""
    folder.mkdir(mode=0o700)
    return str(folder) if store == "FileSystemCache" else f"lmdb:{folder}"


@pytest.mark.parametrize("store", ["FileSystemCache", "LMDBCache"])
def test_processes_on_a_full_disk(small_disk: Path, tmp_path: Path, store: str) -> None:
    """The store's small disk filled to the last byte, for a second or two, again and again,
    while clients write, are killed and paused: every write refused meanwhile raises a
    cachekit error with nothing written, nothing acknowledged is lost, and service resumes
    once the space is back."""
    spec = embedded_spec(small_disk / "cache", store)
    wanted = ["disk_full", "kill9", "pause"]
    history, target, clients = run_processes(
        [spec] * 4, tmp_path / "history", SECONDS, wanted, disk=small_disk, kinds=EMBEDDED,
        seed=seed(),
    )  # fmt: skip
    name = f"processes/{store} on a full disk"
    verify(name, history, target, clients, spec, wanted, tmp_path, kinds=EMBEDDED)
    assert any("WriteError" in str(op.value) for op in history)  # (disk_full saw them)


@pytest.mark.parametrize("store", ["FileSystemCache", "LMDBCache", "RedisCache"])
def test_processes_whose_clock_jumps(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """The clients' wall clock stepped back and forth (5 s to an hour) while they run and are
    paused (and killed, on the embedded stores); their monotonic clock runs on, as a host's
    does. Values expire by the stepped clock (early or late: the expire workload judges
    what a read finds across a step, and when between steps); leases and waits are timed
    by the monotonic clock and, on Redis, judged by the server's clock, so every other
    workload stays exact."""
    if faketime_library() is None:
        message = "the libfaketime wheel is not installed (pip install libfaketime)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    clock = tmp_path / "clock"
    kinds: tuple[str, ...] = EMBEDDED
    server, lease = None, 1.0
    if store == "RedisCache":
        use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0)
        server = request.getfixturevalue("nemesis_redis")
        spec, kinds, lease, wanted = f"{server.url}|n:", KINDS, LEASE, ["clock_jump", "pause"]
    else:
        spec = embedded_spec(tmp_path / "store", store)
        wanted = ["clock_jump", "kill9", "pause"]
    history, target, clients = run_processes(
        [spec] * 4, tmp_path / "history", SECONDS, wanted, server=server, clock=clock,
        lease=lease, kinds=kinds, seed=seed(),
    )  # fmt: skip
    name = f"processes/{store} whose clock jumps"
    verify(name, history, target, clients, spec, wanted, tmp_path, kinds=kinds)


def test_processes_on_redis(
    tmp_path: Path, nemesis_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the clients reach Redis through a proxy that a partition cuts off; the server
    is restarted, killed with SIGKILL (``appendfsync always``: nothing acknowledged is
    lost), starved of memory, and its connections dropped."""
    use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0)
    proxy = BlackholeProxy(nemesis_redis.port)
    spec = f"{nemesis_redis.url}|n:"
    cut = f"redis://127.0.0.1:{proxy.port}/0|n:"
    # (pause twice a round: a stopped holder whose exit then fails, its store restarted or
    # its connection killed meanwhile, is not told, and one short run injects one pause)
    wanted = ["kill9", "pause", "client_kill", "restart", "pause", "crash", "memory", "partition"]
    try:
        history, target, clients = run_processes(
            [spec, cut, spec, cut],
            tmp_path / "history",
            SECONDS,
            wanted,
            server=nemesis_redis,
            proxy=proxy,
            behind_proxy=cut,
            lease=LEASE,
            seed=seed(),
        )
    finally:
        proxy.swallowing.clear()
        proxy.close()
    verify("processes/RedisCache", history, target, clients, spec, wanted, tmp_path)


@pytest.mark.parametrize(
    ("persistence", "fault"),
    [(None, "restart"), ("everysec", "crash")],
    ids=["persists-nothing-restarted", "everysec-killed"],
)
def test_locks_on_a_redis_that_loses_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, persistence: str | None, fault: str
) -> None:
    """A restart of a Redis that persists nothing erases every lease, and ``kill -9`` of one
    that syncs its file every second may lose the last second's: a second holder may enter,
    and the first is told."""
    use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0)
    extra = ("--appendfsync", persistence) if persistence else ()
    server = RedisServer(tmp_path, binary=redis_binary(), durable=bool(persistence), extra=extra)
    server.start()
    try:
        spec = f"{server.url}|v:"
        wanted = [fault, "pause", "client_kill"]
        kinds = ("section",)
        history, target, clients = run_processes(
            [spec] * 4,
            tmp_path / "history",
            SECONDS,
            wanted,
            server=server,
            lease=LEASE,
            kinds=kinds,
            seed=seed(),
        )
        name = f"processes/RedisCache {persistence or 'without persistence'}, {fault}"
        verify(name, history, target, clients, spec, wanted, tmp_path, kinds=kinds)
    finally:
        server.stop()


def test_processes_on_a_sentinel_topology_failed_over(
    tmp_path: Path, sentinel_topology: SentinelTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master killed (and back as a replica), switched over and stalled past the
    sentinels' patience (they promote a replica; it resumes as a master until made a
    replica), clients paused and killed.

    ``CACHEKIT_REDIS_DURABLE_WRITES = 2`` (every replica): a switch-over's old
    master takes writes no replica that stays will keep, so only confirming
    every write on both replicas loses nothing in both kinds of failover; the
    default lease settings keep exclusion (a lease is granted once a replica
    has it).
    """
    use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0, durable_writes=2)
    ports = ",".join(str(sentinel.port) for sentinel in sentinel_topology.sentinels)
    spec = f"sentinel:{ports}|s:"
    wanted = ["failover", "switchover", "stall", "pause", "kill9"]
    history, target, clients = run_processes(
        [spec] * 4,
        tmp_path / "history",
        SECONDS,
        wanted,
        topology=sentinel_topology,
        lease=LEASE,
        seed=seed(),
    )
    # The sentinels' events are heard (every failover of the nemesis), and the stalls' are
    # judged by them alone (the nemesis excuses no stall): an unplanned failover each.
    wanted += ["heard switches", "unplanned failover"]
    verify("processes/Sentinel", history, target, clients, spec, wanted, tmp_path)


def test_processes_on_a_cluster_failed_over_and_resharded(
    tmp_path: Path, cluster: ClusterTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three masters with a replica each: the master serving the workloads' keys (or their
    lock's lease) killed, its replica promoted and the node back as a replica, or stalled
    until its replica took over (it resumes believing itself the master); the slots
    moved to another master key by key while the workloads run; clients paused and killed.

    ``CACHEKIT_REDIS_DURABLE_WRITES = 1``: a write is acknowledged once the shard's replica
    has it, so a killed master loses nothing acknowledged (while its shard has no replica,
    writes there raise ``StorageError``); a migration loses nothing by itself.
    """
    use_settings(monkeypatch, lease=LEASE, redis_timeout=2.0, durable_writes=1)
    prefix = "{n}:"  # every workload key in one slot: a transaction's keys must share one
    spec = f"cluster:{cluster.startup}|{prefix}"
    slots = (key_slot(prefix), lease_slot(open_cache(spec), "section"))
    wanted = ["cluster_failover", "cluster_stall", "migrate", "pause", "kill9"]
    history, target, clients = run_processes(
        [spec] * 4,
        tmp_path / "history",
        SECONDS,
        wanted,
        cluster=cluster,
        slots=slots,
        lease=LEASE,
        seed=seed(),
    )
    # (a client's cluster client reaches a killed node's slots again only once it refreshes
    # its map: a client that lived 2.7 s of failovers acknowledged no transfer or memo)
    # The nodes' logs are read (every failover of the nemesis found), and the stalls are
    # judged by them alone (the nemesis excuses no stall): an unplanned failover each.
    wanted += ["heard elections", "unplanned failover"]
    name = "processes/Cluster"
    verify(name, history, target, clients, spec, wanted, tmp_path, min_life=4.0)


def gunicorn_master(tmp_path: Path) -> int:
    for log in tmp_path.glob("gunicorn-*.log"):
        for line in log.read_text().splitlines():
            if "Listening at" in line:
                return int(line.split("[")[2].split("]")[0])
    raise AssertionError("no gunicorn master pid in the log")


def notes_folder(tmp_path: Path) -> Path:
    """Where gunicorn workers write their holders' notes (``NEMESIS_NOTES``)."""
    folder = tmp_path / "notes"
    folder.mkdir()
    return folder


def test_gunicorn_sync_workers_recycled_killed_and_reloaded(tmp_path: Path) -> None:
    real = tmp_path / "cache"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    notes = notes_folder(tmp_path)
    env = {"FLASK_CACHE_DIR": str(tmp_path / "link"), "NEMESIS_NOTES": str(notes)}
    args = ("-w", "4", "--max-requests", "40", "--max-requests-jitter", "20")
    wanted = ["kill9", "reload"]
    with gunicorn(tmp_path, *args, env=env, app="tests.nemesis.webapp:app") as base:
        master = gunicorn_master(tmp_path)
        history, target, clients = run_http(
            base,
            master,
            SECONDS,
            wanted,
            spelling=str(tmp_path / "link"),
            notes=notes,
            seed=seed(),
            max_requests=40,
        )
        get_ok(base + "/")
    name = "gunicorn sync/FileSystemCache"
    wanted.append("recycle")  # --max-requests: seen to retire workers
    verify(name, history, target, clients, str(real), wanted, tmp_path, http=True)


def test_gunicorn_gevent_preload_workers_on_lmdb(tmp_path: Path) -> None:
    """The master opens the store before forking; workers are killed, reloaded and paused."""
    notes = notes_folder(tmp_path)
    env = {"FLASK_CACHE_TYPE": "cachekit.LMDBCache", "NEMESIS_NOTES": str(notes)}
    args = ("-w", "2", "-k", "gevent", "--preload", "--worker-connections", "100")
    wanted = ["kill9", "reload", "pause"]
    spec = f"lmdb:{tmp_path / 'cache'}"
    with gunicorn(
        tmp_path, *args, "--timeout", "30", env=env, app="tests.nemesis.webapp:app"
    ) as base:
        master = gunicorn_master(tmp_path)
        history, target, clients = run_http(
            base, master, SECONDS, wanted, spelling=spec, notes=notes, lease=LEASE, seed=seed()
        )
        get_ok(base + "/")
    name = "gunicorn gevent --preload/LMDBCache"
    verify(name, history, target, clients, spec, wanted, tmp_path, http=True)


def test_gunicorn_gevent_preload_workers_on_redis(
    tmp_path: Path, nemesis_redis: RedisServer
) -> None:
    notes = notes_folder(tmp_path)
    env = {
        "FLASK_CACHE_TYPE": "RedisCache",
        "FLASK_CACHE_REDIS_URL": nemesis_redis.url,
        "FLASK_CACHE_KEY_PREFIX": "g:",
        "FLASK_CACHEKIT_LEASE": str(LEASE),
        "FLASK_CACHEKIT_REDIS_TIMEOUT": "2",
        "NEMESIS_NOTES": str(notes),
    }
    args = (
        "-w",
        "2",
        "-k",
        "gevent",
        "--preload",
        "--worker-connections",
        "100",
        "--timeout",
        "30",
    )
    wanted = ["kill9", "reload", "client_kill", "pause"]
    spec = f"{nemesis_redis.url}|g:"
    with gunicorn(tmp_path, *args, env=env, app="tests.nemesis.webapp:app") as base:
        master = gunicorn_master(tmp_path)
        began = time.monotonic()
        history, target, clients = run_http(
            base,
            master,
            SECONDS,
            wanted,
            spelling=spec,
            notes=notes,
            server=nemesis_redis,
            lease=LEASE,
            seed=seed(),
        )
        assert time.monotonic() - began < SECONDS + 100
    name = "gunicorn gevent --preload/RedisCache"
    verify(name, history, target, clients, spec, wanted, tmp_path, http=True)
