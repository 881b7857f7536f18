"""LMDBCache: what is specific to the embedded backend (the contract suite covers the rest).

Flask-Caching's own API and decorators on it, expiry and the sweep, long keys,
a full store and a full disk, forks, dead readers and writers, the directory
rules and the refusal of network file systems.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_caching import Cache

import cachekit
from cachekit import LMDBCache
from cachekit.lmdb import store as lmdb_store
from cachekit.resolve import strategy_for

from .pidnamespaces import in_a_container

FORK = mp.get_context("fork")


def app_cache(directory: Path, **config: Any) -> tuple[Flask, Cache]:
    app = Flask(__name__)
    cache = Cache()
    cache.init_app(
        app, config={"CACHE_TYPE": "cachekit.LMDBCache", "CACHE_DIR": str(directory), **config}
    )
    return app, cache


# -- Flask-Caching's API -----------------------------------------------------------------


def test_flask_caching_api(tmp_path: Path) -> None:
    app, cache = app_cache(tmp_path / "c", CACHE_DEFAULT_TIMEOUT=0)
    backend = cache.cache
    assert isinstance(backend, LMDBCache)
    with app.app_context():
        assert cache.get("a") is None and not cache.has("a")
        assert cache.set("a", {"x": [1, 2]}) and cache.get("a") == {"x": [1, 2]}
        assert cache.has("a")
        assert not cache.add("a", 1) and cache.add("b", 2)
        assert cache.get_many("a", "b", "c") == [{"x": [1, 2]}, 2, None]
        assert cache.get_dict("a", "b") == {"a": {"x": [1, 2]}, "b": 2}
        assert cache.set_many({"c": 3, "d": "four"}) == ["c", "d"]
        assert backend.inc("c") == 4 and backend.dec("c", 10) == -6 and backend.inc("new") == 1
        assert cache.delete("c") and not cache.delete("c")
        assert cache.delete_many("a", "zz") == ["a", "zz"]
        assert cache.get("a") is None and cache.get("d") == "four"
        assert cache.clear() and cache.get("b") is None and cache.get("d") is None


def test_inc_is_atomic_and_keeps_the_expiry(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    backend.set("n", 5, timeout=100)
    assert backend.inc("n") == 6
    assert strategy_for(backend).read("n").expires >= int(time.time()) + 98  # type: ignore[union-attr]

    def work() -> list[int]:
        return [backend.inc("m") for _ in range(300)]

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.extend(work())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, 1201))


def test_flask_cachings_own_decorators(tmp_path: Path) -> None:
    app, cache = app_cache(tmp_path / "c", CACHE_DEFAULT_TIMEOUT=60)
    calls: list[str] = []

    @app.get("/page")
    @cache.cached()
    def page() -> str:
        calls.append("page")
        return f"page {len(calls)}"

    @cache.memoize()
    def square(n: int) -> int:
        calls.append(f"square {n}")
        return n * n

    client = app.test_client()
    assert client.get("/page").text == client.get("/page").text == "page 1"
    with app.app_context():
        assert square(3) == square(3) == 9
        assert square(4) == 16
        cache.delete_memoized(square, 3)
        assert square(3) == 9
    assert calls == ["page", "square 3", "square 4", "square 3"]


def test_missing_cache_dir_is_refused_at_init(tmp_path: Path) -> None:
    with pytest.raises(cachekit.ConfigurationError, match="CACHE_DIR"):
        Cache(Flask(__name__), config={"CACHE_TYPE": "cachekit.LMDBCache"})


@pytest.mark.parametrize(
    "options", [{"durability": "always"}, {"map_size": 1000}, {"map_size": "big"}]
)
def test_bad_options_are_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(cachekit.ConfigurationError):
        app_cache(tmp_path / "c", CACHE_OPTIONS=options)


def test_one_directory_with_two_settings_in_one_process_is_refused(tmp_path: Path) -> None:
    LMDBCache(str(tmp_path / "c"))
    with pytest.raises(cachekit.ConfigurationError, match="same CACHE_OPTIONS"):
        LMDBCache(str(tmp_path / "c"), durability="machine")


def test_machine_durability_works(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"), durability="machine")
    assert cachekit.incr(backend, "n") == 1 and backend.get("n") == 1


# -- expiry ------------------------------------------------------------------------------


def test_expired_entries_read_as_missing_and_are_swept(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"), default_timeout=0)
    store = backend._store
    expires = int(time.time()) - 1  # already expired: written as they would be found later
    with store.writing() as txn:
        for i in range(600):
            txn.put(store.key(f"old{i}"), lmdb_store.pack(expires, i))
    backend.set("kept", 1)
    backend.set("soon", 1, timeout=100)
    assert backend.get("old1") is None and not backend.has("old1")
    assert cachekit.incr(backend, "old2") == 1  # an expired counter starts again
    assert backend.add("old3", "new") and backend.get("old3") == "new"
    removed = store.sweep(batch=10_000)
    assert removed == 598
    assert backend.get("kept") == 1 and backend.get("soon") == 1
    left = {key for key in stored_keys(backend) if not key.startswith(b"cachekit:stats:")}
    assert left == {b"kept", b"soon", b"old2", b"old3"}


def test_the_sweep_is_bounded_and_goes_on_where_it_stopped(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"), default_timeout=0)
    store = backend._store
    with store.writing() as txn:
        for i in range(100):
            txn.put(store.key(f"k{i:03}"), lmdb_store.pack(1, i))  # expired in 1970
    assert [store.sweep(batch=30) for _ in range(5)] == [30, 30, 30, 10, 0]
    assert stored_keys(backend) == set()


def stored_keys(backend: LMDBCache) -> set[bytes]:
    opened = backend._store._environment()
    with opened.env.begin(db=opened.entries) as txn:
        return {bytes(key) for key in txn.cursor().iternext(values=False)}


# -- keys and space ----------------------------------------------------------------------


def test_keys_longer_than_lmdbs_limit_work_and_stay_apart(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    stem = "é" * 400  # 800 bytes: past LMDB's 511
    keys = [stem + "a", stem + "b", "x" * 5000]
    for i, key in enumerate(keys):
        assert cachekit.incr(backend, key, i + 1) == i + 1
    assert [backend.get(key) for key in keys] == [1, 2, 3]
    assert all(len(key) <= 511 for key in stored_keys(backend))


def test_a_full_store_refuses_the_write_and_keeps_everything(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"), map_size=1 << 20)
    cachekit.incr(backend, "n")
    backend.set("doc", {"a": 1})
    with pytest.raises(cachekit.WriteError, match="is full"):
        backend.set("big", b"x" * (2 << 20))
    with pytest.raises(cachekit.WriteError, match="is full"):
        with cachekit.transaction(backend, "n", "doc") as txn:
            txn["n"] += 1
            txn["doc"] = b"y" * (2 << 20)
    assert backend.get("n") == 1 and backend.get("doc") == {"a": 1}  # all or nothing
    assert cachekit.incr(backend, "n") == 2  # and it goes on


def test_a_full_disk_is_a_write_error_not_a_crash(small_disk: Path) -> None:
    """The store maps its file writable: without blocks reserved ahead, SIGBUS would kill us."""
    backend = LMDBCache(str(small_disk / "c"), map_size=64 << 20)
    assert cachekit.incr(backend, "n") == 1
    chunk = os.urandom(256 << 10)
    written = 0
    with pytest.raises(cachekit.WriteError, match="disk space|is full"):
        for i in range(100):
            backend.set(f"blob{i}", chunk)
            written = i + 1
    assert 5 < written < 32
    assert backend.get("n") == 1 and backend.get("blob0") == chunk
    for i in range(written):
        backend.delete(f"blob{i}")
    assert cachekit.incr(backend, "n") == 2


def _fill(directory: str, tag: int, size: int, out: Any) -> None:
    backend = LMDBCache(directory, map_size=64 << 20)
    value = os.urandom(size)
    try:
        for i in range(100_000):
            if size < 1000:  # many small keys at once, spread over the tree
                backend.set_many(
                    {f"{tag}-{i}-{j}-{os.urandom(4).hex()}": value for j in range(300)}
                )
            else:
                backend.set(f"{tag}-{i}", value)
        out.put("never full")
    except cachekit.WriteError as error:
        out.put(str(error))


@pytest.mark.parametrize("size", [100, 500, (64 << 10) - 13, 200_000])
def test_processes_filling_a_disk_get_write_errors_not_sigbus(small_disk: Path, size: int) -> None:
    """The disk budget is shared: no process writes past what was reserved for all of them."""
    directory = str(small_disk / "c")
    LMDBCache(directory, map_size=64 << 20)
    out = FORK.Queue()
    workers = [FORK.Process(target=_fill, args=(directory, n, size, out)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]  # SIGBUS would be -7
    assert all("cannot reserve disk space" in out.get(timeout=5) for _ in workers)


# -- processes ---------------------------------------------------------------------------


def _incr_in_child(directory: str, out: Any) -> None:
    try:
        out.put(cachekit.incr(LMDBCache(directory), "n"))
    except Exception as error:  # reported to the parent
        out.put(repr(error))


def test_a_child_never_uses_its_parents_environment(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    assert cachekit.incr(backend, "n") == 1  # open in the parent, with a reader slot used
    out = FORK.Queue()
    children = [
        FORK.Process(target=_incr_in_child, args=(str(tmp_path / "c"), out)) for _ in range(3)
    ]
    for child in children:
        child.start()
    got = sorted(out.get(timeout=30) for _ in children)
    for child in children:
        child.join(10)
    assert got == [2, 3, 4]
    assert cachekit.incr(backend, "n") == 5  # the parent's environment still works


def test_a_fork_during_another_threads_transaction_is_refused_in_the_child(
    tmp_path: Path,
) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    cachekit.incr(backend, "n")
    lmdb_store._in_flight.add(-1)  # as if another thread were inside a transaction now
    try:
        out = FORK.Queue()
        child = FORK.Process(target=_incr_in_child, args=(str(tmp_path / "c"), out))
        child.start()
    finally:
        lmdb_store._in_flight.discard(-1)
    assert "forked while another thread was inside a transaction" in out.get(timeout=30)
    child.join(10)
    assert cachekit.incr(backend, "n") == 2


def _die_inside_a_write(directory: str, ready: Any) -> None:
    store = LMDBCache(directory)._store
    with store.writing() as txn:
        txn.put(store.key("n"), lmdb_store.pack(0, 1000))
        ready.set()
        time.sleep(60)


def test_a_writer_killed_inside_its_transaction_blocks_no_one_and_writes_nothing(
    tmp_path: Path,
) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    cachekit.incr(backend, "n")
    ready = FORK.Event()
    victim = FORK.Process(target=_die_inside_a_write, args=(str(tmp_path / "c"), ready))
    victim.start()
    assert ready.wait(20)
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    victim.join(10)
    began = time.monotonic()
    assert cachekit.incr(backend, "n") == 2  # not 1001: the dead write is invisible
    assert time.monotonic() - began < 1


def _die_inside_a_read(directory: str, ready: Any) -> None:
    opened = LMDBCache(directory)._store._environment()
    with opened.env.begin():
        ready.set()
        time.sleep(60)


def test_reader_slots_of_dead_processes_are_freed(tmp_path: Path) -> None:
    directory = str(tmp_path / "c")
    ready = FORK.Event()
    victim = FORK.Process(target=_die_inside_a_read, args=(directory, ready))
    victim.start()
    assert ready.wait(20)
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    victim.join(10)
    out = FORK.Queue()
    child = FORK.Process(target=_readers_in_child, args=(directory, out))
    child.start()
    assert str(victim.pid) not in out.get(timeout=30)
    child.join(10)


def _readers_in_child(directory: str, out: Any) -> None:
    out.put(LMDBCache(directory)._store._environment().env.readers())


# -- the directory -----------------------------------------------------------------------


def test_directory_rules(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o770)
    shared.chmod(0o770)
    with pytest.raises(cachekit.ConfigurationError, match="chmod 700"):
        LMDBCache(str(shared))
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    (linked / "data.mdb").symlink_to(tmp_path / "elsewhere.mdb")
    with pytest.raises(cachekit.ConfigurationError, match="symlink"):
        LMDBCache(str(linked))
    made = LMDBCache(str(tmp_path / "new" / "store"))
    assert os.stat(made.directory).st_mode & 0o777 == 0o700
    assert all(
        os.stat(os.path.join(made.directory, name)).st_mode & 0o077 == 0
        for name in ("data.mdb", "lock.mdb")
    )


def test_one_directory_spelled_two_ways_is_one_store(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    a, b = LMDBCache(str(tmp_path / "real")), LMDBCache(str(tmp_path / "link" / "."))
    assert cachekit.incr(a, "n") == 1 and cachekit.incr(b, "n") == 2
    assert strategy_for(a)._locks is strategy_for(b)._locks


#: A process in a pid namespace of its own (a container sharing the directory as a volume):
#: opens the store, sets ``who``, says "open" and holds it until its input closes.
IN_A_CONTAINER = """
import os, sys
import cachekit
from cachekit import LMDBCache
try:
    store = LMDBCache(sys.argv[1])
except cachekit.ConfigurationError as error:
    print("refused:", error, flush=True)
    raise SystemExit(0)
store.set("who", f"pid {os.getpid()}")
print("open", os.getpid(), flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(120)
def test_a_store_open_from_another_pid_namespace_is_refused(tmp_path: Path) -> None:
    """LMDB tells readers apart by pid; in two containers sharing the directory, pids collide
    (each one's first process is pid 1). Found: the second container's pid 1 could not open
    the store (``mdb_txn_begin: Resource temporarily unavailable``), and one whose pid did
    not collide opened it, its dead readers taken for live ones. Now refused clearly, from
    any other namespace, while the first has it open; opened once it has gone, nothing lost."""
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o700)
    # two containers starting at once: exactly one opens (the claims are serialized)
    both = [in_a_container(IN_A_CONTAINER, str(directory)) for _ in range(2)]
    said = [run.stdout.readline() if run.stdout else "" for run in both]
    opened = [run for run, line in zip(both, said, strict=True) if line.split() == ["open", "1"]]
    try:
        assert len(opened) == 1, said
        refused = next(line for line in said if line.split() != ["open", "1"])
        assert refused.startswith("refused:") and "another pid namespace" in refused, said
        # pid 1 as well, the second's LMDB pid lock would have collided; this process's pid
        # does not collide: refused all the same
        with pytest.raises(cachekit.ConfigurationError, match="another pid namespace"):
            LMDBCache(str(directory))
    finally:
        for run in both:
            run.communicate("", timeout=60)
    assert [run.returncode for run in both] == [0, 0]
    store = LMDBCache(str(directory))  # the other namespace has gone: its claim is stale
    assert store.get("who") == "pid 1"
    assert sorted(p.name for p in directory.glob(".cachekit-pidns-*")) == [
        f".cachekit-pidns-{os.stat('/proc/self/ns/pid').st_ino}.lock"
    ]


MOUNTINFO = """22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /srv rw,relatime shared:2 - nfs4 server:/export rw,vers=4.2
41 40 0:36 / /srv/local\\040dir rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/home/app", "ext4"), ("/srv/state", "nfs4"), ("/srv", "nfs4"), ("/srv/local dir/x", "tmpfs"),
     ("/srvx", "ext4")],
)  # fmt: skip
def test_the_file_system_of_a_path_is_read_from_mountinfo(path: str, kind: str) -> None:
    assert lmdb_store.mount_type(MOUNTINFO, path) == kind


def test_a_network_file_system_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdb_store, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(cachekit.ConfigurationError, match="nfs4 network file system"):
        LMDBCache(str(tmp_path / "c"))


# -- the command line and doctor ---------------------------------------------------------


def test_cli_and_doctor_on_lmdb(tmp_path: Path) -> None:
    from .test_resources_and_cli import flask

    env = {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"}
    assert flask(tmp_path, "cachekit", "incr", "n", "--by", "41", env=env).stdout.strip() == "41"
    assert flask(tmp_path, "cachekit", "get", "n", env=env).stdout.strip() == "41"
    assert flask(tmp_path, "cachekit", "doctor", env=env).returncode == 0
    assert LMDBCache(str(tmp_path / "cache")).get("n") == 41


def test_doctor_on_lmdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cachekit.doctor import PROBLEM, WARNING, diagnose_backend

    backend = LMDBCache(str(tmp_path / "c"), default_timeout=0, map_size=1 << 20)
    assert diagnose_backend(backend) == []
    for i in range(40):
        backend.set(f"k{i}", os.urandom(20_000))
    os.chmod(backend.directory, 0o770)
    monkeypatch.setattr(lmdb_store, "filesystem_type", lambda path: "cifs")
    used = backend._store.statistics()["used_bytes"]
    findings = {
        (finding.level, finding.what.split(":")[0]) for finding in diagnose_backend(backend)
    }
    assert findings == {
        (PROBLEM, f"the LMDB store {backend.directory} is on a cifs network file system, where"
         " LMDB's locks and shared memory do not work"),
        (PROBLEM, f"refusing the cache directory {backend.directory!r}"),
        (WARNING, f"the LMDB store {backend.directory} uses {used:,} of its 1,048,576 bytes"),
    }  # fmt: skip


# -- what runs inside a write transaction ------------------------------------------------


class WritesWhenUnpickled:
    """A value whose unpickling writes to the cache: it must never run inside a transaction."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        LMDBCache(self.directory).set("side effect", True)


def test_incr_and_add_never_unpickle_inside_a_transaction(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    backend.set("thing", WritesWhenUnpickled(str(tmp_path / "c")))
    with pytest.raises(cachekit.ValueTypeError, match="holds a WritesWhenUnpickled, not an int"):
        cachekit.incr(backend, "thing")
    assert not backend.add("thing", 1)
    assert backend.has("thing") and backend.delete("thing")
    assert backend.get("side effect") is True  # written once, by the error message's decoding


def test_ints_past_64_bits(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    backend.set("big", 2**70)
    assert cachekit.incr(backend, "big") == 2**70 + 1 and backend.get("big") == 2**70 + 1
    backend.set("edge", 2**63 - 1)
    assert (
        cachekit.incr(backend, "edge") == 2**63 and cachekit.incr(backend, "edge", -1) == 2**63 - 1
    )
    assert cachekit.incr(backend, "neg", -(2**80)) == -(2**80)
    assert backend.get_many("big", "edge", "neg") == [2**70 + 1, 2**63 - 1, -(2**80)]


def test_a_value_pickle_refuses_is_a_serialization_error(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    backend.set("k", "old")
    for write in (
        lambda: backend.set("k", threading.Lock()),
        lambda: backend.add("new", threading.Lock()),
        lambda: backend.set_many({"k": threading.Lock()}),
    ):
        with pytest.raises(cachekit.SerializationError, match="cannot be pickled"):
            write()
    assert backend.get("k") == "old" and backend.get("new") is None


def test_a_corrupt_entry_can_be_deleted(tmp_path: Path) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    store = backend._store
    with store.writing() as txn:
        txn.put(store.key("bad"), lmdb_store.HEADER.pack(0) + b"\x00not a pickle")
    with pytest.raises(cachekit.CorruptValue, match="left as it is"):
        backend.get("bad")
    assert backend.delete("bad") and backend.get("bad") is None


def _incr_and_report(directory: str, out: Any) -> None:
    try:
        out.put(cachekit.incr(LMDBCache(directory), "forks"))
    except cachekit.StorageError as error:
        out.put(str(error))


def test_forks_while_another_thread_asks_for_figures(tmp_path: Path) -> None:
    """py-lmdb counts env.info() as an operation in flight: a child forked then must not hang.

    It either uses the store or, when the fork caught the other thread inside a
    call, refuses to with a clear error; it never waits forever.
    """
    directory = str(tmp_path / "c")
    backend = LMDBCache(directory)
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            backend._store.statistics()

    asker = threading.Thread(target=ask)
    asker.start()
    got = []
    try:
        for _ in range(10):
            out = FORK.Queue()
            child = FORK.Process(target=_incr_and_report, args=(directory, out))
            child.start()
            try:
                got.append(out.get(timeout=20))
            except Exception:
                got.append(f"the child hung or failed (exit code {child.exitcode})")
            child.kill()
            child.join(5)
    finally:
        stop.set()
        asker.join(10)
    assert all(
        isinstance(value, int) or "forked while another thread" in str(value) for value in got
    )


def _open_and_write(directory: str, out: Any) -> None:
    backend = LMDBCache(directory)
    backend.set("k", os.urandom(1000))
    opened = backend._store._environment()
    out.put((opened.owner.get(), opened.inode, opened.budget.get()))


def test_a_store_made_again_starts_with_no_budget(tmp_path: Path) -> None:
    """The budget is kept in the lock file, which outlives data.mdb if only that is deleted."""
    directory = str(tmp_path / "c")
    for _ in range(2):
        out = FORK.Queue()
        child = FORK.Process(target=_open_and_write, args=(directory, out))
        child.start()
        owner, inode, budget = out.get(timeout=30)
        child.join(10)
        assert owner == inode and 0 < budget <= lmdb_store.RESERVE
        for name in ("data.mdb", "lock.mdb"):  # as CorruptValue's message advises
            os.unlink(os.path.join(directory, name))


@pytest.mark.parametrize(
    "stored",
    [b"\x05", b"\0\0\0\0\x01\x05", b"\0\0\0\0\x01" + bytes(9), b"\0\0\0\0\x02", b"\0\0\0\0\x07x"],
    ids=["truncated", "short int", "long int", "empty big int", "unknown kind"],
)
def test_corrupt_entries_are_reported_never_read_or_counted_over(
    tmp_path: Path, stored: bytes
) -> None:
    backend = LMDBCache(str(tmp_path / "c"))
    store = backend._store
    with store.writing() as txn:
        txn.put(store.key("bad"), stored)
    for read in (lambda: backend.get("bad"), lambda: cachekit.incr(backend, "bad")):
        with pytest.raises(cachekit.CorruptValue):
            read()
    with store.writing() as txn:
        assert txn.get(store.key("bad")) == stored  # left as it is
