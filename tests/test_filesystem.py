"""What is specific to FileSystemCache: file format, lock file, failures, corruption."""

from __future__ import annotations

import os
import pickle
import signal
import stat
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from cachelib import FileSystemCache

import cachekit
from cachekit.filesystem import SWEEP_EVERY, SWEPT_SUFFIX, TEMP_SUFFIX
from cachekit.lockfiles import LOCK_NAME
from cachekit.resolve import strategy_for


def file_of(cache: Any, key: str) -> Path:
    return Path(cache._get_filename(key))


def test_values_stay_in_flask_caching_format(fs_backend: Any) -> None:
    cachekit.update(fs_backend, "doc", lambda _: {"a": [1, 2]})
    assert fs_backend.get("doc") == {"a": [1, 2]}
    other = FileSystemCache(fs_backend._path, threshold=0)  # a fresh reader, e.g. another worker
    assert other.get("doc") == {"a": [1, 2]}
    fs_backend.set("plain", 10)
    assert cachekit.incr(fs_backend, "plain") == 11


def test_lock_file_is_one_private_file_that_cachelib_skips(fs_backend: Any) -> None:
    for i in range(300):
        cachekit.incr(fs_backend, f"key-{i}")
        with cachekit.lock(fs_backend, f"name-{i}"):
            pass
    directory = Path(fs_backend._path)
    assert sorted(p.name for p in directory.parent.iterdir()) == ["cache"]  # nothing beside it
    lock_file = directory / LOCK_NAME
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    entries = [p for p in directory.iterdir() if p.name != LOCK_NAME]
    assert len(entries) == 300
    assert len(list(fs_backend._list_dir())) == 300  # cachelib counts the entries only
    for entry in entries:
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_clear_works_after_cachekit_used_the_directory(fs_backend: Any) -> None:
    cachekit.incr(fs_backend, "n")
    with cachekit.lock(fs_backend, "x"):
        pass
    lock_file = Path(fs_backend._path) / LOCK_NAME
    inode = lock_file.stat().st_ino
    assert fs_backend.clear() is True
    assert lock_file.stat().st_ino == inode  # clear() leaves the lock file alone
    assert fs_backend.get("n") is None
    assert cachekit.incr(fs_backend, "n") == 1


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "cache").mkdir(mode=0o700)
    (tmp_path / "cache" / LOCK_NAME).symlink_to(target)
    cache = FileSystemCache(str(tmp_path / "cache"), threshold=0)
    with pytest.raises(cachekit.ConfigurationError, match="symlink"):
        cachekit.incr(cache, "n")


def test_a_lock_file_open_to_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir(mode=0o700)
    path = tmp_path / "cache" / LOCK_NAME
    path.write_text("")
    path.chmod(0o666)
    cache = FileSystemCache(str(tmp_path / "cache"), threshold=0)
    with pytest.raises(cachekit.ConfigurationError, match="chmod 600"):
        cachekit.incr(cache, "n")


def test_a_threshold_is_refused_naming_the_setting(tmp_path: Path) -> None:
    cache = FileSystemCache(str(tmp_path / "cache"), threshold=500)
    with pytest.raises(cachekit.ConfigurationError, match="CACHE_THRESHOLD=0"):
        cachekit.incr(cache, "n")
    assert cache.get("n") is None


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x00", struct.pack("I", 0), struct.pack("I", 0) + b"\x80\x05garbage"],
    ids=["empty", "truncated-header", "no-payload", "garbage"],
)
def test_a_corrupt_file_is_an_error_not_a_reset(fs_backend: Any, content: bytes) -> None:
    cachekit.incr(fs_backend, "n")
    path = file_of(fs_backend, "n")
    path.write_bytes(content)
    for call in (
        lambda: cachekit.incr(fs_backend, "n"),
        lambda: cachekit.update(fs_backend, "n", lambda v: v),
        lambda: cachekit.get_or_compute(fs_backend, "n", lambda: 0),
        lambda: cachekit.transaction(fs_backend, "n").__enter__(),
    ):
        with pytest.raises(cachekit.CorruptValue, match="'n'"):
            call()
    assert path.read_bytes() == content  # left as it is, for someone to look at


def test_a_failed_write_keeps_the_old_value_and_releases_the_lock(fs_backend: Any) -> None:
    cachekit.incr(fs_backend, "n")
    blocker = Path(str(file_of(fs_backend, "n")) + TEMP_SUFFIX)
    blocker.mkdir()  # the temporary file cannot be created: the write fails
    (blocker / "f").write_text("")
    with pytest.raises(cachekit.WriteError, match="'n'") as raised:
        cachekit.incr(fs_backend, "n")
    assert isinstance(raised.value, OSError)
    assert fs_backend.get("n") == 1
    (blocker / "f").unlink()
    blocker.rmdir()
    assert cachekit.incr(fs_backend, "n") == 2


def test_a_write_past_the_file_size_limit_fails_cleanly(fs_backend: Any) -> None:
    """A real failed write: RLIMIT_FSIZE makes the kernel refuse the bytes (EFBIG)."""
    import resource
    import signal

    cachekit.update(fs_backend, "blob", lambda _: b"small")
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
        with pytest.raises(cachekit.WriteError, match="'blob'"):
            cachekit.update(fs_backend, "blob", lambda _: b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert fs_backend.get("blob") == b"small"
    assert not Path(str(file_of(fs_backend, "blob")) + TEMP_SUFFIX).exists()
    cachekit.update(fs_backend, "blob", lambda _: b"x" * 100_000)  # space is back
    assert fs_backend.get("blob") == b"x" * 100_000


def test_a_stale_temporary_file_is_replaced_by_the_next_write(fs_backend: Any) -> None:
    cachekit.incr(fs_backend, "n")
    stale = Path(str(file_of(fs_backend, "n")) + TEMP_SUFFIX)
    stale.write_bytes(b"left by a writer killed mid-write")
    assert cachekit.incr(fs_backend, "n") == 2
    assert not stale.exists()
    assert fs_backend.get("n") == 2


def test_writes_leave_no_temporary_files(fs_backend: Any) -> None:
    for i in range(50):
        cachekit.incr(fs_backend, f"k{i % 5}")
        with cachekit.transaction(fs_backend, "a", "b") as txn:
            txn["a"] = txn.get("a", 0) + 1
            txn["b"] = txn.get("b", 0) - 1
    names = entry_names(fs_backend)
    assert not [name for name in names if name.endswith(TEMP_SUFFIX)]
    assert len(names) == 7


def test_get_or_compute_uses_the_cache_default_timeout(fs_backend: Any) -> None:
    from cachekit.resolve import strategy_for

    fs_backend.default_timeout = 600
    cachekit.get_or_compute(fs_backend, "page", lambda: "html")
    entry = strategy_for(fs_backend)._load("page")
    assert entry is not None and entry.expires > 0
    cachekit.get_or_compute(fs_backend, "forever", lambda: "html", timeout=0)
    entry = strategy_for(fs_backend)._load("forever")
    assert entry is not None and entry.expires == 0


def test_two_backends_on_one_directory_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """Record locks belong to the process: both instances must share one lock table."""
    first = FileSystemCache(str(tmp_path / "cache"), threshold=0)
    second = FileSystemCache(str(tmp_path / "cache"), threshold=0)
    with cachekit.lock(first, "x"):
        import threading

        outcome: list[str] = []

        def other() -> None:
            try:
                with cachekit.lock(second, "x", timeout=0.2):
                    outcome.append("taken")
            except cachekit.LockTimeout:
                outcome.append("timeout")

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert outcome == ["timeout"]


def test_a_cache_directory_others_can_write_to_is_refused(tmp_path: Path) -> None:
    cache = FileSystemCache(str(tmp_path / "cache"), threshold=0)
    os.chmod(tmp_path / "cache", 0o777)
    with pytest.raises(cachekit.ConfigurationError, match="chmod 700"):
        cachekit.incr(cache, "n")
    os.chmod(tmp_path / "cache", 0o700)
    assert cachekit.incr(cache, "n") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_cache_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    cache = FileSystemCache(str(tmp_path / "cache"), threshold=0)
    os.chown(tmp_path / "cache", 65534, 65534)
    with pytest.raises(cachekit.ConfigurationError, match="belongs to uid 65534"):
        cachekit.incr(cache, "n")


def test_a_symlinked_entry_is_never_followed(fs_backend: Any, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"planted")
    cachekit.incr(fs_backend, "n")
    entry = file_of(fs_backend, "n")
    entry.unlink()
    entry.symlink_to(target)
    with pytest.raises(cachekit.StorageError, match="symlink"):
        cachekit.incr(fs_backend, "n")
    assert target.read_bytes() == b"planted"


def test_a_lock_name_and_a_key_of_the_same_name_are_independent(fs_backend: Any) -> None:
    with cachekit.lock(fs_backend, "report"):
        assert cachekit.incr(fs_backend, "report") == 1
        with cachekit.transaction(fs_backend, "report") as txn:
            txn["report"] += 1
    assert fs_backend.get("report") == 2


def write_as_nobody(directory: str, out: Any) -> None:
    """In a child: drop to uid 65534, so that file permissions apply (root ignores them)."""
    os.setgid(65534)
    os.setuid(65534)
    cache = FileSystemCache(directory, threshold=0)
    results: list[Any] = [cachekit.incr(cache, "n")]
    os.chmod(directory, 0o500)  # read-only
    try:
        cachekit.incr(cache, "n")
        results.append("written")
    except cachekit.WriteError as error:
        results.append(("WriteError", str(error)))
    results.append(cache.get("n"))
    os.chmod(directory, 0o700)  # writable again
    results.append(cachekit.incr(cache, "n"))
    out.put(results)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_read_only_directory_fails_cleanly_then_recovers() -> None:
    import multiprocessing
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="cachekit-nobody-"))  # outside root's private tmp
    try:
        (home / "cache").mkdir(mode=0o700)
        for path in (home, home / "cache"):
            os.chown(path, 65534, 65534)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=write_as_nobody, args=(str(home / "cache"), out))
        child.start()
        first, failure, kept, after = out.get(timeout=30)
        child.join(10)
    finally:
        shutil.rmtree(home)
    assert first == 1
    assert failure[0] == "WriteError" and "'n'" in failure[1]
    assert kept == 1  # the old value is intact
    assert after == 2  # and service resumes once the directory is writable


class DieAtStep:
    """Stands in for ``os`` in cachekit.filesystem and SIGKILLs the process at its n-th call."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.calls = 0

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if not callable(real) or name in {"fsencode", "strerror", "getpid"}:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            return real(*args, **kwargs)

        return call


def update_dying_at(directory: str, step: int) -> None:
    import cachekit.filesystem as filesystem

    cache = FileSystemCache(directory, threshold=0)
    cachekit.incr(cache, "warm-up")  # opens the lock file before the steps are counted
    dying = DieAtStep(step)
    exchange = filesystem._exchange
    vars(filesystem)["os"] = dying

    def exchange_dying(tmp: str, path: str) -> bool:
        dying.tick()
        return exchange(tmp, path)

    vars(filesystem)["_exchange"] = exchange_dying
    cachekit.update(cache, "n", lambda value: value + 1)


def test_a_writer_killed_between_any_two_steps_leaves_old_or_new(fs_backend: Any) -> None:
    """Kill an update at its 1st, 2nd, ... system call until one completes."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    cachekit.incr(fs_backend, "n")
    directory = fs_backend._path
    for step in range(1, 60):
        before = fs_backend.get("n")
        child = ctx.Process(target=update_dying_at, args=(directory, step))
        child.start()
        child.join(20)
        began = time.monotonic()
        value = strategy_for(fs_backend)._load("n")  # raises CorruptValue if partial
        assert value is not None and value.value in (before, before + 1)
        temporary = [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]
        assert len(temporary) <= 1  # at most the one of this key, reused next time
        with cachekit.lock(fs_backend, "any", timeout=1), cachekit.transaction(fs_backend, "n"):
            pass
        assert time.monotonic() - began < 1
        if child.exitcode == 0:
            assert step > 5  # it really was killed at several steps before completing
            break
        assert child.exitcode == -signal.SIGKILL
    else:
        pytest.fail("the update never completed")
    assert cachekit.incr(fs_backend, "n") == fs_backend.get("n")


def spelled_worker(directory: str, count: int, out: Any) -> None:
    cache = FileSystemCache(directory, threshold=0)
    out.put([cachekit.incr(cache, "n") for _ in range(count)])


def test_one_directory_spelled_several_ways_shares_one_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink, a path through '..', the real path: one lock file, every number once."""
    import multiprocessing as mp

    real = tmp_path / "real" / "cache"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "sub").mkdir()
    spellings = [str(real), str(tmp_path / "link"), str(tmp_path / "sub" / ".." / "link"), "rel"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").symlink_to(real)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=spelled_worker, args=(s, 150, out)) for s in spellings * 2]
    for proc in procs:
        proc.start()
    got = sorted(n for _ in procs for n in out.get(timeout=60))
    for proc in procs:
        proc.join(10)
    assert got == list(range(1, 150 * len(procs) + 1))
    assert [p.name for p in real.iterdir() if p.name.endswith("lock.__wz_cache")] == [LOCK_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "rel", "sub"]


#: A container's process: ``incr`` and ``lock`` on the shared directory; prints JSON.
CONTAINER_WORKER = """
import json, os, sys, time
import cachekit
from cachelib import FileSystemCache
cache = FileSystemCache(sys.argv[1], threshold=0)
values, sections = [], []
for _ in range(int(sys.argv[2])):
    values.append(cachekit.incr(cache, "n"))
    with cachekit.lock(cache, "L", timeout=60):
        entered = time.monotonic()
        time.sleep(0.001)
        sections.append((entered, time.monotonic()))
print(json.dumps({"pid": os.getpid(), "values": values, "sections": sections}), flush=True)
"""


@pytest.mark.timeout(180)
def test_containers_sharing_a_directory_are_exact(tmp_path: Path) -> None:
    """Three processes, each pid 1 of a pid namespace of its own (containers sharing the
    directory as a volume): record locks are the kernel's, which know no namespaces, so
    every number is handed out once and no two holders overlap."""
    import itertools
    import json

    from .pidnamespaces import in_a_container

    directory = tmp_path / "shared"
    directory.mkdir(mode=0o700)
    runs = [in_a_container(CONTAINER_WORKER, str(directory), "200") for _ in range(3)]
    said = [json.loads(run.communicate(timeout=150)[0]) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert [each["pid"] for each in said] == [1, 1, 1]
    assert sorted(v for each in said for v in each["values"]) == list(range(1, 601))
    sections = sorted(tuple(s) for each in said for s in each["sections"])
    assert len(sections) == 600
    overlaps = [(a, b) for a, b in itertools.pairwise(sections) if b[0] < a[1]]
    assert not overlaps, overlaps[:3]


def test_two_spellings_in_one_process_share_the_thread_stripes(tmp_path: Path) -> None:
    """Record locks belong to the process: two lock-file objects would let its threads overlap."""
    import threading

    real = tmp_path / "cache"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    caches = [FileSystemCache(str(real), threshold=0), FileSystemCache(str(tmp_path / "link"), 0)]
    results: list[int] = []

    def work(cache: Any) -> None:
        for _ in range(200):
            results.append(cachekit.incr(cache, "n"))

    threads = [threading.Thread(target=work, args=(c,)) for c in caches * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(1, 1201))


# -- the sweep of expired files ---------------------------------------------


def write_expired(cache: Any, key: str, value: Any = "old") -> Path:
    """Store ``value`` under ``key`` in cachelib's format, expired 10 s ago."""
    path = file_of(cache, key)
    path.write_bytes(struct.pack("I", int(time.time()) - 10) + pickle.dumps(value))
    path.chmod(0o600)
    return path


def entry_names(cache: Any) -> set[str]:
    """The directory's names but the lock file's and the statistics' (a timer flushes them)."""
    from cachekit import stats

    flushed = {file_of(cache, stats.PREFIX + name).name for name in stats.names()}
    skipped = {LOCK_NAME} | flushed | {name + TEMP_SUFFIX for name in flushed}
    return set(os.listdir(cache._path)) - skipped


def test_the_sweep_deletes_expired_entries_and_dead_writers_leftovers_only(
    fs_backend: Any,
) -> None:
    expired = [write_expired(fs_backend, f"gone-{i}") for i in range(50)]
    cachekit.incr(fs_backend, "live")  # never expires
    fs_backend.set("later", "kept", timeout=3600)
    leftover = Path(str(file_of(fs_backend, "live")) + TEMP_SUFFIX)
    leftover.write_bytes(b"left by a writer killed mid-write")
    moved = write_expired(fs_backend, "elsewhere")  # left aside by a sweep killed mid-way
    moved.rename(str(moved) + SWEPT_SUFFIX)
    directory = Path(fs_backend._path)
    (directory / "notes.txt").write_bytes(struct.pack("I", 1))  # not an entry's name
    (directory / ("ab" * 16)).symlink_to(expired[1])  # never followed
    strategy = strategy_for(fs_backend)
    assert strategy.sweep(batch=1000) == 52  # type: ignore[attr-defined]
    assert entry_names(fs_backend) == {
        file_of(fs_backend, "live").name,
        file_of(fs_backend, "later").name,
        "notes.txt",
        "ab" * 16,
    }
    assert cachekit.incr(fs_backend, "live") == 2 and fs_backend.get("later") == "kept"
    assert cachekit.incr(fs_backend, "gone-3") == 1  # expired is missing, swept or not


def test_the_sweep_judges_a_file_by_the_clock_when_it_deletes_it(fs_backend: Any) -> None:
    """A sweep whose batch read the clock before it stepped back (or before a long stop)
    deletes nothing that is live by the clock when it reaches the file."""
    fs_backend.set("k", "live", timeout=100)
    strategy: Any = strategy_for(fs_backend)
    batch_clock = time.time() + 3600  # (the clock an hour ahead when the batch began)
    assert strategy._sweep_name(file_of(fs_backend, "k").name, batch_clock) == 0
    assert fs_backend.get("k") == "live"


def test_writes_sweep_expired_files_on_their_own(fs_backend: Any) -> None:
    """Every SWEEP_EVERY writes examine SWEEP_BATCH names: a flood of one-off keys is bounded."""
    for i in range(300):
        write_expired(fs_backend, f"client-{i}")
    for _ in range(2 * SWEEP_EVERY):
        cachekit.incr(fs_backend, "n")
    assert entry_names(fs_backend) == {file_of(fs_backend, "n").name}
    assert fs_backend.get("n") == 2 * SWEEP_EVERY
    assert cachekit.statistics(fs_backend, merged=False)["swept"] == 300  # each one counted


def hold_key_in_an_update(directory: str, ready: Any, go: Any) -> None:
    cache = FileSystemCache(directory, threshold=0)
    cachekit.update(cache, "k", lambda _: (ready.set(), go.wait(20), 7)[2])


def test_the_sweep_never_deletes_a_file_a_writer_of_another_process_holds(
    fs_backend: Any,
) -> None:
    """The sweep knows file names, not keys: a key's stripe is its file's, in every process."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    path = write_expired(fs_backend, "k")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=hold_key_in_an_update, args=(fs_backend._path, ready, go))
    child.start()
    try:
        assert ready.wait(20)
        assert strategy_for(fs_backend).sweep(batch=1000) == 0  # type: ignore[attr-defined]
        assert path.exists()
    finally:
        go.set()
        child.join(20)
    assert child.exitcode == 0
    assert strategy_for(fs_backend).sweep(batch=1000) == 0  # type: ignore[attr-defined]
    assert fs_backend.get("k") == 7


@pytest.mark.parametrize("sets", [1, 2])
def test_a_plain_set_landing_while_the_sweep_moves_a_file_is_put_back(
    fs_backend: Any, monkeypatch: pytest.MonkeyPatch, sets: int
) -> None:
    """cachelib's own set takes no lock: the sweep deletes only the very file it found expired.

    Two sets: the first frees the expired file's inode and the second's file
    would get its number (ext4 reuses it at once), were the sweep not holding
    the expired file open until it compares.
    """

    write_expired(fs_backend, "k")
    rename = os.rename

    def set_then_rename(source: str, target: str) -> None:
        for i in range(1, sets + 1):
            fs_backend.set("k", f"fresh-{i}")  # lands between the sweep's look and its move
        rename(source, target)

    monkeypatch.setattr(os, "rename", set_then_rename)
    assert strategy_for(fs_backend).sweep(batch=1000) == 0  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert fs_backend.get("k") == f"fresh-{sets}"
    assert entry_names(fs_backend) == {file_of(fs_backend, "k").name}


def test_a_live_value_a_killed_sweep_left_aside_is_put_back(fs_backend: Any) -> None:
    """A sweep killed after moving a plain set's value aside: the next sweep puts it back."""
    for key in ("alone", "replaced"):
        fs_backend.set(key, f"{key}-moved", timeout=3600)
        path = file_of(fs_backend, key)
        path.rename(str(path) + SWEPT_SUFFIX)
    fs_backend.set("replaced", "newer", timeout=3600)  # set again since: the newer one stays
    assert strategy_for(fs_backend).sweep(batch=1000) == 2  # type: ignore[attr-defined]
    assert fs_backend.get("alone") == "alone-moved" and fs_backend.get("replaced") == "newer"
    assert entry_names(fs_backend) == {file_of(fs_backend, k).name for k in ("alone", "replaced")}


def test_the_sweep_never_waits_on_a_fifo(fs_backend: Any) -> None:
    import threading

    from cachekit import filesystem

    fifo = file_of(fs_backend, "k")
    os.mkfifo(fifo, 0o600)
    os.mkfifo(str(file_of(fs_backend, "j")) + SWEPT_SUFFIX, 0o600)
    strategy: Any = strategy_for(fs_backend)

    found: list[Any] = []

    def sweep() -> None:
        found.append(strategy.sweep(1000))
        # A file the listing saw as regular but that became a FIFO: opened without waiting.
        later = time.time() + 3600
        found.append(filesystem._expired(str(fifo), later))
        found.append(filesystem.FileSystemStrategy._unlink_expired(str(fifo)))

    sweeping = threading.Thread(target=sweep, daemon=True)
    sweeping.start()
    sweeping.join(10)
    assert not sweeping.is_alive(), "the sweep waits on a FIFO"
    assert found == [0, False, 0]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def sweep_in_a_child(strategy: Any, out: Any) -> None:
    out.put(strategy.sweep(batch=1000))  # the parent's strategy, as the fork copied it


def test_a_child_forked_during_a_sweep_sweeps(fs_backend: Any) -> None:
    """The one-sweep-at-a-time lock is per process: a fork never inherits it held."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    strategy: Any = strategy_for(fs_backend)
    strategy.sweep(batch=1)  # (the lock exists)
    write_expired(fs_backend, "gone")
    out = ctx.Queue()
    with strategy._sweeping.get():  # a sweep of another thread, in progress
        assert strategy.sweep(batch=1000) == 0
        child = ctx.Process(target=sweep_in_a_child, args=(strategy, out))
        child.start()
        child.join(20)
    assert child.exitcode == 0 and out.get(timeout=5) == 1


CHURN_SECONDS = 3.0


def count_and_churn(directory: str, out: Any) -> None:
    """Count on 4 lasting keys while writing one-off keys that expire in a second, sweeping
    at every write (SWEEP_EVERY 1 in this process): the sweep races writers all along."""
    import cachekit.filesystem as filesystem

    vars(filesystem)["SWEEP_EVERY"] = 1
    cache = FileSystemCache(directory, threshold=0)
    counted = [0] * 4
    once = 0
    deadline = time.monotonic() + CHURN_SECONDS
    try:
        while time.monotonic() < deadline:
            cachekit.incr(cache, f"n{once % 4}")
            counted[once % 4] += 1
            cachekit.incr(cache, f"once-{os.getpid()}-{once}", timeout=1)
            once += 1
    except Exception as error:  # (a writer whose file the sweep took: say so, at once)
        out.put(repr(error))
        raise
    out.put((counted, once))


def test_sweeps_racing_writers_of_other_processes_lose_no_count(fs_backend: Any) -> None:
    """Three processes count exactly while their sweeps delete the expiring keys they write."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    children = [ctx.Process(target=count_and_churn, args=(fs_backend._path, out)) for _ in range(3)]
    for child in children:
        child.start()
    results = [out.get(timeout=60) for _ in children]
    assert all(isinstance(result, tuple) for result in results), results
    for child in children:
        child.join(20)
        assert child.exitcode == 0
    assert [fs_backend.get(f"n{i}") for i in range(4)] == [
        sum(counted[i] for counted, _ in results) for i in range(4)
    ]
    created = sum(once for _, once in results)
    left = len(entry_names(fs_backend)) - 4
    # Those written in the last second or two have not expired yet; the others are swept.
    assert left < created * 3 / 4, (left, created)
    time.sleep(2.1)  # every one-off key has expired
    strategy: Any = strategy_for(fs_backend)
    while strategy.sweep(batch=10_000):
        pass
    assert entry_names(fs_backend) == {file_of(fs_backend, f"n{i}").name for i in range(4)}


def sweep_dying_at(directory: str, step: int) -> None:
    import cachekit.filesystem as filesystem

    cache = FileSystemCache(directory, threshold=0)
    cachekit.incr(cache, "warm-up")  # opens the lock file before the steps are counted
    vars(filesystem)["os"] = DieAtStep(step)
    strategy_for(cache).sweep(batch=1000)  # type: ignore[attr-defined]


def test_a_sweep_killed_between_any_two_steps_loses_no_live_entry(fs_backend: Any) -> None:
    """Kill a sweep at its 1st, 2nd, ... system call: live entries stay, the next sweep ends it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    cachekit.incr(fs_backend, "live")
    for step in range(1, 200):
        write_expired(fs_backend, "gone-a")
        write_expired(fs_backend, "gone-b")
        child = ctx.Process(target=sweep_dying_at, args=(fs_backend._path, step))
        child.start()
        child.join(20)
        assert fs_backend.get("live") == 1 and cachekit.incr(fs_backend, "warm-up") >= 1
        strategy_for(fs_backend).sweep(batch=1000)  # type: ignore[attr-defined]
        assert entry_names(fs_backend) == {
            file_of(fs_backend, name).name for name in ("live", "warm-up")
        }
        if child.exitcode == 0:
            assert step > 10  # it really was killed at several steps before completing
            break
        assert child.exitcode == -signal.SIGKILL
    else:
        pytest.fail("the sweep never completed")
