"""The CacheKit extension (settings, start-up checks, JSON errors, metrics), the demo's front."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, got_request_exception
from flask_caching import Cache
from prometheus_client.parser import text_string_to_metric_families

import cachekit
from cachekit import CacheKit
from cachekit.extension import GENERIC, state_of

from .server import ROOT, concurrently, get, gunicorn, post, post_ok


def make_app(tmp_path: Path, **config: Any) -> tuple[Flask, Cache]:
    """An app with its own Cache and CacheKit, FileSystemCache in ``tmp_path`` by default."""
    app = Flask(__name__)
    (tmp_path / "cache").mkdir(mode=0o700, exist_ok=True)
    app.config.update(
        {
            "CACHE_TYPE": "FileSystemCache",
            "CACHE_DIR": str(tmp_path / "cache"),
            "CACHE_THRESHOLD": 0,
            "CACHE_DEFAULT_TIMEOUT": 0,
            "SECRET_KEY": "test secret",  # values signed (cachekit.signing), as in production
            **config,
        }
    )
    cache = Cache(app)
    cachekit.CacheKit(cache, app)
    return app, cache


def test_init_app_needs_the_cache_first(tmp_path: Path) -> None:
    cache = Cache()
    kit = cachekit.CacheKit(cache)
    app = Flask(__name__)
    with pytest.raises(cachekit.ConfigurationError, match=r"cache.init_app\(app\) before"):
        kit.init_app(app)
    with pytest.raises(cachekit.InvalidArgument):
        cachekit.CacheKit(object())  # type: ignore[arg-type]


def test_a_setup_that_would_lose_state_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(cachekit.ConfigurationError) as refused:
        make_app(tmp_path, CACHE_THRESHOLD=500)
    message = str(refused.value)
    assert "CACHE_THRESHOLD=500" in message and "fix: set CACHE_THRESHOLD=0" in message
    with pytest.raises(cachekit.ConfigurationError, match="CACHEKIT_LEASE"):
        make_app(tmp_path, CACHEKIT_LEASE="-1")
    with warnings.catch_warnings():  # newer Flask-Caching releases warn: NullCache
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(cachekit.ConfigurationError, match="NullCache"):
            make_app(tmp_path, CACHE_TYPE="NullCache")


def test_settings_are_read_with_their_defaults(tmp_path: Path) -> None:
    app, cache = make_app(tmp_path, CACHEKIT_LOCK_TIMEOUT="0.2", CACHEKIT_KEY_WAIT=3)
    state = state_of(app)
    assert state is not None and state.findings == ()
    assert state.settings.lock_timeout == 0.2 and state.settings.key_wait == 3
    assert state.settings.lease == 10.0  # the default
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with app.app_context(), cachekit.lock(cache, "L"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        began = time.monotonic()
        with app.app_context(), pytest.raises(cachekit.LockTimeout):
            with cachekit.lock(cache, "L"):  # waits CACHEKIT_LOCK_TIMEOUT, not 10 s
                pass
        assert time.monotonic() - began < 5
    finally:
        release.set()
        thread.join(10)


def test_a_per_process_backend_in_one_process_gets_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One process (flask run, tests, the CLI) is right for SimpleCache: nothing is said.

    Several worker processes are refused at boot (the gunicorn test below).
    """
    with caplog.at_level(logging.WARNING):
        app, cache = make_app(tmp_path, CACHE_TYPE="SimpleCache")
    assert "separate copy" not in caplog.text and "cachekit" not in caplog.text
    with app.app_context():
        assert cachekit.incr(cache, "n") == 1  # one process: it works


def test_json_errors_400_503_and_500(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, cache = make_app(tmp_path, CACHEKIT_JSON_ERRORS=True)

    @app.get("/bad")
    def bad() -> Any:
        return {"n": cachekit.incr(cache, "")}

    @app.get("/busy")
    def busy() -> Any:
        raise cachekit.LockTimeout("could not lock it within 1 s", name="x", timeout=1)

    @app.get("/corrupt")
    def corrupt() -> Any:
        raise cachekit.CorruptValue("entry 'x' cannot be decoded")

    @app.get("/contended")
    def contended() -> Any:
        raise cachekit.ConcurrentUpdateError("update of 'x' lost 8 races")

    logged: list[Exception] = []

    def record(sender: Flask, exception: Exception, **extra: Any) -> None:
        logged.append(exception)

    got_request_exception.connect(record, app)  # (weakly: ``record`` lives as long as the test)
    client = app.test_client()
    response = client.get("/bad")
    assert response.status_code == 400 and response.json is not None
    assert response.json["error"] == "InvalidArgument" and "key" in response.json["message"]
    response = client.get("/busy")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json == {"error": "LockTimeout", "message": GENERIC[503]}
    assert client.get("/contended").status_code == 503
    with caplog.at_level(logging.ERROR):
        response = client.get("/corrupt")
    assert response.status_code == 500
    assert response.json == {"error": "CorruptValue", "message": GENERIC[500]}
    assert "entry 'x' cannot be decoded" in caplog.text and "Traceback" in caplog.text
    assert [type(e) for e in logged] == [cachekit.CorruptValue]
    app.debug = True  # in debug mode the client sees the reason
    assert client.get("/busy").json["message"] == "could not lock it within 1 s"  # type: ignore[index]


def test_unreachable_redis_starts_and_answers_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not configuration: the app boots, logs why, and every request says 503 with the reason."""
    with caplog.at_level(logging.ERROR):
        app, cache = make_app(
            tmp_path,
            CACHE_TYPE="RedisCache",
            CACHE_REDIS_URL="redis://127.0.0.1:1/0",
            CACHEKIT_JSON_ERRORS=True,
            CACHEKIT_METRICS_PATH="/metrics",
        )
    assert "Redis does not answer" in caplog.text

    @app.get("/n")
    def n() -> Any:
        return {"n": cachekit.incr(cache, "n")}

    @app.get("/plain")
    def plain() -> Any:
        return {"n": cache.get("n")}  # Flask-Caching's own client raises redis's error

    client = app.test_client()
    for path in ("/n", "/plain"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            response = client.get(path)
        assert response.status_code == 503, response.data
        assert response.json is not None and response.json["message"] == GENERIC[503]
        assert "127.0.0.1:1" in caplog.text  # the reason is in the log, not in the answer
    response = client.get("/metrics")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.mimetype == "text/plain"


def test_the_demo_refuses_to_boot_under_gunicorn_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as refused:
        with gunicorn(tmp_path, "-w", "2", env={"FLASK_CACHE_THRESHOLD": "500"}):
            pass
    log = str(refused.value)
    assert "gunicorn exited" in log and "fix: set CACHE_THRESHOLD=0" in log


def test_the_demo_answers_bad_input_with_400_and_changes_state_on_post_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_CACHE_DIR", str(tmp_path / "cache"))
    from app import create_app

    client = create_app().test_client()
    index = client.get("/")
    assert index.status_code == 200 and index.mimetype == "text/html"
    assert b'<form method="post" action="/transfer">' in index.data
    for path in ("/hits", "/inc", "/transfer", "/notes", "/report", "/quote/invalidate"):
        assert client.put(path).status_code == 405
    assert client.get("/inc").status_code == 405  # no state change on GET
    assert client.get("/hits").json == {"hits": 0}  # GET reads
    assert client.post("/hits").json == {"hits": 1}
    for path, reason in (
        ("/transfer?amount=abc", "whole number"),
        ("/transfer?amount=-5", "between 1 and"),
        ("/notes?item=", "1 to 200 characters"),
        ("/notes?item=" + "x" * 201, "1 to 200 characters"),
    ):
        response = client.post(path)
        assert response.status_code == 400 and reason in response.json["message"]  # type: ignore[index]
    response = client.get("/quote?symbol=%3Cscript%3E")
    assert response.status_code == 400 and "symbol" in response.json["message"]  # type: ignore[index]
    assert client.get("/accounts").json == {"account:a": 1000, "account:b": 1000}  # untouched
    assert client.post("/transfer", data={"amount": "7"}).json == {
        "account:a": 993,
        "account:b": 1007,
    }
    assert client.get("/boots").json == {"boots": 0}  # not served by gunicorn: no boot


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_metrics_are_every_workers_and_agree_on_every_worker(tmp_path: Path) -> None:
    """A burst on 4 workers, then scrapes: exact totals from idle workers too (their timers)."""
    with gunicorn(tmp_path, "-w", "4", "-k", "gthread", "--threads", "4") as base:
        concurrently(32, [lambda: post_ok(base + "/hits")] * 300)
        deadline = time.monotonic() + 10
        while (counts := incr_counts(base)) < 4 + 300:  # 4 boots
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)
        scrapes = concurrently(8, [lambda: incr_counts(base)] * 16)  # spread over the workers
        assert counts == 304 and set(scrapes) == {304}
        status, figures = get(base + "/stats")
        assert status == 200 and figures["all_workers"]["operations"]["incr"] == 304


def incr_counts(base: str) -> int:
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "cachekit_operations":
            for sample in family.samples:
                if sample.labels == {"operation": "incr"}:
                    return int(sample.value)
    raise AssertionError(text)


def test_metrics_without_prometheus_client_are_refused_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cachekit.metrics

    monkeypatch.setattr(cachekit.metrics, "CollectorRegistry", None)
    with pytest.raises(cachekit.ConfigurationError, match=r"flask-cachekit\[prometheus\]"):
        make_app(tmp_path, CACHEKIT_METRICS_PATH="/metrics")
    monkeypatch.undo()
    with pytest.raises(cachekit.ConfigurationError, match="starting with '/'"):
        make_app(tmp_path, CACHEKIT_METRICS_PATH="metrics")


def test_doctor_reports_problems_first_and_changes_nothing(tmp_path: Path) -> None:
    from .test_resources_and_cli import flask

    env = {"FLASK_CACHE_TYPE": "SimpleCache", "FLASK_CACHE_DEFAULT_TIMEOUT": "300"}
    result = flask(tmp_path, "cachekit", "doctor", env=env)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert out.index("problems:") < out.index("separate copy") < out.index("warnings:")
    assert out.index("warnings:") < out.index("default timeout is 300 s")
    fixes = [line.strip() for line in out.splitlines() if line.strip().startswith("fix:")]
    assert len(fixes) == 2 and all("see " not in fix for fix in fixes)

    assert flask(tmp_path, "cachekit", "incr", "n").stdout.strip() == "1"
    before = snapshot(tmp_path / "cache")
    result = flask(tmp_path, "cachekit", "doctor", env={"FLASK_CACHE_DEFAULT_TIMEOUT": "300"})
    assert result.returncode == 0 and "warnings:" in result.stdout
    assert snapshot(tmp_path / "cache") == before  # doctor wrote nothing, created nothing


def test_doctor_reports_what_would_stop_the_app_from_starting(tmp_path: Path) -> None:
    """A bad setting is a finding; an app that cannot be created is one clear line, no trace."""
    from .test_resources_and_cli import flask

    result = flask(tmp_path, "cachekit", "doctor", env={"FLASK_CACHEKIT_LEASE": "-1"})
    assert result.returncode == 1, result.stderr
    assert "CACHEKIT_LEASE must be a finite number" in result.stdout
    assert "Traceback" not in result.stderr

    env = {"FLASK_CACHE_TYPE": "RedisClusterCache", "FLASK_CACHE_REDIS_CLUSTER": "127.0.0.1:1"}
    result = flask(tmp_path, "cachekit", "doctor", env=env)
    assert result.returncode == 1
    assert "the app could not be created, so nothing was checked" in result.stderr
    assert "127.0.0.1:1" in result.stderr or "Cluster" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_adds_nothing_to_an_lmdb_store(tmp_path: Path) -> None:
    """Loading the app opens the store (LMDBCache opens it at start-up); doctor adds nothing."""
    from .test_resources_and_cli import flask

    env = {"FLASK_CACHE_TYPE": "cachekit.LMDBCache"}
    assert flask(tmp_path, "cachekit", "incr", "n", env=env).stdout.strip() == "1"
    before = {name: size for name, (size, _) in snapshot(tmp_path / "cache").items()}
    assert flask(tmp_path, "cachekit", "doctor", env=env).returncode == 0
    after = {name: size for name, (size, _) in snapshot(tmp_path / "cache").items()}
    assert after == before
    stats = json.loads(flask(tmp_path, "cachekit", "stats", env=env).stdout)
    assert stats["operations"]["incr"] == 1  # the doctor ran no operation of its own


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory``: its size and modification time, in ns."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


def test_the_readmes_setup_works_on_the_first_request(tmp_path: Path) -> None:
    """``common.py`` and ``myapp.py`` exactly as "Use it in your app" shows them, under gunicorn."""
    readme = (ROOT / "README.md").read_text()
    assert "pip install flask-cachekit" in readme
    section = readme[readme.index("## Use it in your app") :]
    common, factory = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    assert "kit = CacheKit(cache)" in common and "kit.init_app(app)" in factory
    project = tmp_path / "project"
    project.mkdir()
    (project / "common.py").write_text(common)
    (project / "myapp.py").write_text(factory)
    # (The helper sets FLASK_CACHE_DIR, which from_prefixed_env reads: a directory under
    # tmp_path that nothing has created; the factory creates it 0700 under a umask of 002.)
    assert not (tmp_path / "cache").exists()
    args = ("-w", "2", "--chdir", str(project))
    with gunicorn(tmp_path, *args, app="myapp:create_app()", umask=0o002) as base:
        answers = concurrently(8, [lambda: post(base + "/hits")] * 40)
    assert sorted(body["hits"] for _, body in answers) == list(range(1, 41))
    assert {status for status, _ in answers} == {200}
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


FORK_STORM = """
import os, sys, threading
from flask import Flask
from flask_caching import Cache
import cachekit

app = Flask(__name__)
app.config.update(CACHE_TYPE="cachekit.LMDBCache", CACHE_DIR=sys.argv[1],
                  CACHE_DEFAULT_TIMEOUT=0, CACHEKIT_STATS_INTERVAL=0.0005)
cache = Cache(app)
cachekit.CacheKit(cache, app)
refused = 0
with app.app_context():
    for round in range(300):
        cachekit.incr(cache, "master")  # counts to flush: the timer flushes all the time
        pid = os.fork()
        if pid == 0:
            try:
                cachekit.incr(cache, "children")
            except cachekit.StorageError:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        refused += os.waitstatus_to_exitcode(status) == 3
    print(refused, cache.get("children"))
"""


@pytest.mark.timeout(120)
def test_a_fork_never_lands_in_the_middle_of_the_timers_flush(tmp_path: Path) -> None:
    """As gunicorn's --preload master forks workers while its timer flushes its start-up counts.

    A child forked while another thread of its parent was inside an LMDB call
    must refuse the store; the timer's flushes hold the fork gate, so no child
    of this storm (300 forks while the timer flushes every 0.25 ms) is refused.
    """
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    ran = subprocess.run(
        [sys.executable, "-c", FORK_STORM, str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    assert ran.stdout.split() == ["0", "300"], ran.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_simplecache_under_several_workers_is_refused_at_boot_once_per_worker(
    tmp_path: Path,
) -> None:
    with pytest.raises(RuntimeError) as refused:
        with gunicorn(tmp_path, "-w", "4", env={"FLASK_CACHE_TYPE": "SimpleCache"}):
            pass
    log = str(refused.value)
    assert "gunicorn exited" in log
    assert "the server runs 4 worker processes" in log
    assert "SimpleCache keeps a separate copy in each worker process" in log
    assert "cachekit/extension.py" not in log  # one message per worker, not our traceback
    assert log.count("cachekit refuses this cache setup") <= 4


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_simplecache_in_one_worker_boots_with_no_warning(tmp_path: Path) -> None:
    with gunicorn(tmp_path, "-w", "1", env={"FLASK_CACHE_TYPE": "SimpleCache"}) as base:
        assert post_ok(base + "/hits") == {"hits": 1}
        assert post_ok(base + "/hits") == {"hits": 2}
    log = next(tmp_path.glob("gunicorn-*.log")).read_text()
    assert "cachekit:" not in log and "SimpleCache" not in log, log  # (no warning at all)


def test_the_default_threshold_is_named_as_flask_cachings_default(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(CACHE_TYPE="FileSystemCache", CACHE_DIR=str(tmp_path / "c"))
    os.makedirs(tmp_path / "c", mode=0o700)
    cache = Cache(app)
    with pytest.raises(cachekit.ConfigurationError, match="Flask-Caching's default"):
        CacheKit(cache, app)


def test_a_misspelled_setting_is_reported_at_start_up_and_by_doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FLASK_CACHEKIT_JSON_ERORRS", "1")
    app = Flask(__name__)
    os.makedirs(tmp_path / "c", mode=0o700)
    app.config.update(
        CACHE_TYPE="FileSystemCache",
        CACHE_DIR=str(tmp_path / "c"),
        CACHE_THRESHOLD=0,
        CACHEKIT_KEY_WIAT=5,
    )
    cache = Cache(app)
    with caplog.at_level(logging.WARNING):
        CacheKit(cache, app)
    said = caplog.text
    assert "CACHEKIT_KEY_WIAT is not a cachekit setting" in said
    assert "did you mean CACHEKIT_KEY_WAIT?" in said
    assert "did you mean FLASK_CACHEKIT_JSON_ERRORS?" in said
    from cachekit.doctor import diagnose

    whats = [finding.what for finding in diagnose(app)]
    assert any("CACHEKIT_KEY_WIAT" in what for what in whats)
