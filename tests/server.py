"""Run the demo app under a real gunicorn on a free loopback port, and load it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def gunicorn(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    app: str = "app:app",
    umask: int = -1,
) -> Iterator[str]:
    """Serve ``app`` with gunicorn ``args``; yield its base URL, stop it afterwards.

    The cache directory is ``tmp_path / "cache"`` unless ``env`` says otherwise;
    ``umask`` (if not -1) is the server's.
    """
    port = free_port()
    log_path = tmp_path / f"gunicorn-{port}.log"
    environment = {
        **os.environ,
        "FLASK_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(ROOT),
        "--backlog",
        "2048",
        *args,
        app,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, umask=umask
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()}"
                )
            try:
                with urllib.request.urlopen(base + "/", timeout=2):
                    break
            except urllib.error.HTTPError:  # an answer all the same (an app without "/")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                # (TimeoutError: accepted by the listening socket while no worker serves,
                # as while workers refuse to boot: poll again, and see gunicorn exit.)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gunicorn did not answer:\n{log_path.read_text()}"
                    ) from None
                time.sleep(0.1)
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop gunicorn gracefully (its workers flush their statistics), within 15 s.

    A worker forked just before the TERM may get its copy while it still has
    the master's handlers (gunicorn sets its own a moment after the fork): it
    never learns of the stop, and the master waits out ``graceful_timeout``
    before killing it. So each worker still alive is told again every 0.5 s;
    a second TERM to a worker already stopping changes nothing.
    """
    proc.terminate()
    deadline = time.monotonic() + 15
    while True:
        try:
            proc.wait(0.5)
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                return
        for child in children(proc.pid):
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # (the name may hold spaces)
            found.append(int(entry.name))
    return found


#: One opener for every request without a session: building one per request costs an SSL
#: context (the CA bundle loaded again) from Python 3.13 on, and starves the server.
PLAIN = urllib.request.build_opener()


def get(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, Any]:
    """GET ``url``; return the status and the decoded JSON body (errors included)."""
    return send(urllib.request.Request(url), opener)


def post(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, Any]:
    """POST to ``url`` (its input in the query string); the status and the decoded JSON body."""
    return send(urllib.request.Request(url, data=b"", method="POST"), opener)


def send(
    request: urllib.request.Request, opener: urllib.request.OpenerDirector | None
) -> tuple[int, Any]:
    try:
        with (opener or PLAIN).open(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def get_ok(url: str, opener: urllib.request.OpenerDirector | None = None) -> Any:
    status, body = get(url, opener)
    assert status == 200, body
    return body


def post_ok(url: str, opener: urllib.request.OpenerDirector | None = None) -> Any:
    status, body = post(url, opener)
    assert status == 200, body
    return body


def client() -> urllib.request.OpenerDirector:
    """An HTTP client with its own cookie jar: one session, one client id."""
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))


def concurrently(clients: int, jobs: list[Any]) -> list[Any]:
    """Run the callables in ``jobs`` on ``clients`` threads; return their results in order."""
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda job: job(), jobs))
