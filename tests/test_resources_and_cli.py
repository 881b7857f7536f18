"""Per-process and per-request resources, the ``flask cachekit`` commands, statistics."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import cachekit
from cachekit.resources import PerProcess, PerRequest

from .server import ROOT, concurrently, get_ok, gunicorn, post_ok

FORK = mp.get_context("fork")


def test_per_process_builds_once_however_many_threads_race() -> None:
    built = []

    def slow() -> object:
        built.append(1)
        time.sleep(0.2)
        return object()

    resource = PerProcess(slow)
    barrier = threading.Barrier(16)
    got: list[object] = []

    def ask() -> None:
        barrier.wait(10)
        got.append(resource())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and len({id(obj) for obj in got}) == 1


def report_pid_of(resource: PerProcess[Any], out: Any) -> None:
    out.put(resource())


def test_per_process_builds_anew_after_a_fork() -> None:
    resource = PerProcess(os.getpid)
    assert resource() == os.getpid()
    out = FORK.Queue()
    child = FORK.Process(target=report_pid_of, args=(resource, out))
    child.start()
    child_value = out.get(timeout=20)
    child.join(10)
    assert child_value == child.pid != os.getpid()
    assert resource() == os.getpid()


def test_per_request_is_made_once_per_request_and_closed_at_teardown() -> None:
    made: list[int] = []
    closed: list[int] = []

    def make() -> int:
        made.append(1)
        return len(made)

    resource = PerRequest("probe", make, closed.append)
    app = Flask(__name__)
    resource.init_app(app)

    @app.get("/")
    def view() -> dict[str, int]:
        return {"a": resource(), "b": resource()}

    client = app.test_client()
    assert client.get("/").get_json() == {"a": 1, "b": 1}
    assert client.get("/").get_json() == {"a": 2, "b": 2}
    assert closed == [1, 2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_resources_under_preload_and_threads(tmp_path: Path) -> None:
    with gunicorn(tmp_path, "-w", "3", "-k", "gthread", "--threads", "4", "--preload") as base:
        answers = concurrently(40, [lambda: get_ok(base + "/resource")] * 300)
    clients: dict[int, set[str]] = defaultdict(set)
    for answer in answers:
        assert answer["client"]["pid"] == answer["worker"]  # made after the fork, in the worker
        clients[answer["worker"]].add(answer["client"]["id"])
    assert all(len(ids) == 1 for ids in clients.values())  # one per worker process
    assert len({answer["audit"] for answer in answers}) == 300  # one per request
    # (Read through the app: the demo signs its values with its SECRET_KEY.)
    closed = flask(tmp_path, "cachekit", "get", "audits-closed").stdout.strip()
    assert closed == "300"  # every request's resource was closed


def flask(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``flask --app app ARGS`` like a user would, on a cache under ``tmp_path``."""
    environment = {**os.environ, "FLASK_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_reads_and_changes_state(tmp_path: Path) -> None:
    assert flask(tmp_path, "cachekit", "incr", "n").stdout.strip() == "1"
    assert flask(tmp_path, "cachekit", "incr", "n", "--by", "41").stdout.strip() == "42"
    assert flask(tmp_path, "cachekit", "set", "doc", '{"a": [1]}').returncode == 0
    assert json.loads(flask(tmp_path, "cachekit", "get", "doc").stdout) == {"a": [1]}
    missing = flask(tmp_path, "cachekit", "get", "nothing")
    assert missing.returncode == 1 and "missing" in missing.stderr
    assert flask(tmp_path, "cachekit", "del", "doc").stdout.strip() == "deleted"
    # (Read back through the app: its values are signed with its SECRET_KEY.)
    assert flask(tmp_path, "cachekit", "get", "n").stdout.strip() == "42"
    assert flask(tmp_path, "cachekit", "get", "doc").returncode == 1
    help_text = flask(tmp_path, "cachekit", "--help").stdout
    for command in ("get", "set", "incr", "del", "stats", "doctor"):
        assert command in help_text


def test_cli_says_a_refused_configuration_in_one_error_line(tmp_path: Path) -> None:
    result = flask(tmp_path, "cachekit", "incr", "n", env={"FLASK_CACHE_THRESHOLD": "500"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ConfigurationError: cachekit refuses")
    assert "CACHE_THRESHOLD=500" in result.stderr and "fix: set CACHE_THRESHOLD=0" in result.stderr


def test_cli_keeps_a_counter_an_int_unless_forced(tmp_path: Path) -> None:
    assert flask(tmp_path, "cachekit", "incr", "hits").stdout.strip() == "1"
    refused = flask(tmp_path, "cachekit", "set", "hits", "abc")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert flask(tmp_path, "cachekit", "get", "hits").stdout.strip() == "1"  # kept
    assert flask(tmp_path, "cachekit", "set", "hits", "7").returncode == 0  # an int is fine
    assert flask(tmp_path, "cachekit", "incr", "hits").stdout.strip() == "8"
    assert flask(tmp_path, "cachekit", "set", "hits", "abc", "--force").returncode == 0
    assert flask(tmp_path, "cachekit", "get", "hits").stdout.strip() == '"abc"'


def test_cli_refuses_to_change_a_per_process_cache(tmp_path: Path) -> None:
    env = {"FLASK_CACHE_TYPE": "SimpleCache"}
    for command in (("incr", "n"), ("set", "k", "1"), ("del", "k")):
        result = flask(tmp_path, "cachekit", *command, env=env)
        assert result.returncode == 1, command
        assert "keeps its state inside one process" in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_on_redis(tmp_path: Path, redis_url: str) -> None:
    env = {"FLASK_CACHE_TYPE": "RedisCache", "FLASK_CACHE_REDIS_URL": redis_url,
           "FLASK_CACHE_KEY_PREFIX": f"cli-{time.time_ns()}:"}  # fmt: skip
    assert flask(tmp_path, "cachekit", "incr", "n", env=env).stdout.strip() == "1"
    assert flask(tmp_path, "cachekit", "get", "n", env=env).stdout.strip() == "1"
    assert flask(tmp_path, "cachekit", "doctor", env=env).returncode == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FLASK_CACHE_TYPE": "SimpleCache"}, "separate copy in each worker"),
        ({"FLASK_CACHE_THRESHOLD": "500"}, "CACHE_THRESHOLD=0"),
        (
            {"FLASK_CACHE_TYPE": "RedisCache", "FLASK_CACHE_REDIS_URL": "redis://127.0.0.1:1/0"},
            "Redis does not answer",
        ),
    ],
    ids=["per-process", "threshold", "redis-down"],
)
def test_doctor_names_what_would_lose_state(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = flask(tmp_path, "cachekit", "doctor", env=env)
    assert result.returncode == 1
    assert expected in result.stdout


def test_doctor_checks_the_cache_directory(tmp_path: Path) -> None:
    assert flask(tmp_path, "cachekit", "doctor").returncode == 0
    (tmp_path / "cache" / "jobs.lock").write_text("")
    os.chmod(tmp_path / "cache", 0o777)
    result = flask(tmp_path, "cachekit", "doctor")
    assert result.returncode == 1
    assert "chmod 700" in result.stdout and "jobs.lock" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_statistics_merge_every_worker(tmp_path: Path) -> None:
    with gunicorn(tmp_path, "-w", "4") as base:
        concurrently(40, [lambda: post_ok(base + "/hits")] * 400)
        concurrently(20, [lambda: get_ok(base + "/expensive")] * 40)
        # 4 boots + 400 hits + 1 computation, from idle workers too: their timers flush.
        # The answering worker flushes first; the others within about a second.
        deadline = time.monotonic() + 10
        while (figures := get_ok(base + "/stats")["all_workers"])["operations"]["incr"] < 405:
            assert time.monotonic() < deadline, figures
            time.sleep(0.2)
        assert figures["operations"]["incr"] == 405
    # The server has stopped: each worker flushed what was left as it exited.
    figures = json.loads(flask(tmp_path, "cachekit", "stats").stdout)
    assert figures["operations"]["incr"] == 405  # the flask commands count no boot
    assert figures["operations"]["get_or_compute"] == 40
    assert figures["computes"] == 1 and figures["computes_saved"] == 39
    assert figures["locks_taken"] >= 405 + 1  # every incr, the computation's lock
    assert 0 <= figures["lock_waits"] <= figures["locks_taken"]
    assert figures["lock_timeouts"] == 0


def test_process_statistics_count_this_process(fs_backend: Any) -> None:
    for _ in range(5):
        cachekit.incr(fs_backend, "n")
    with pytest.raises(cachekit.LockTimeout):
        with cachekit.lock(fs_backend, "x"):
            threading_timeout(fs_backend)
    figures = cachekit.statistics(fs_backend, merged=False)
    assert figures["operations"]["incr"] == 5
    assert figures["lock_timeouts"] == 1


def threading_timeout(cache: Any) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with cachekit.lock(cache, "x", timeout=0.1):
                pass
        except BaseException as error:  # noqa: BLE001 (handed to the main thread)
            errors.append(error)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    raise errors[0]


def test_a_flush_counts_nothing_of_its_own(fs_backend: Any) -> None:
    cachekit.incr(fs_backend, "n")
    merged = cachekit.statistics(fs_backend)  # flushes this process first
    mine = cachekit.statistics(fs_backend, merged=False)
    assert merged == mine  # the flush's own increments and lock waits are not counted
    assert mine["operations"]["incr"] == 1
    assert mine["locks_taken"] == 1 and mine["lock_waits"] == 0  # nobody else held it


def test_the_demo_shows_statistics_on_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_CACHE_DIR", str(tmp_path / "cache"))
    from app import create_app

    client = create_app().test_client()
    for _ in range(3):
        client.post("/hits")
    page = client.get("/stats/page")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "<code>incr</code>" in text and "locks_taken" in text and "wait-chart" in text
    assert "bucket&#39;s upper bound" in text  # each figure says what it means
