"""Python in a pid namespace of its own, as in a container (tests only).

``unshare --pid --fork --kill-child --mount-proc``: the process is pid 1 of a new pid
namespace and sees that namespace's ``/proc``, as a container's first process
does; the files it opens are the host's, as through a shared volume. It dies
with ``unshare`` (a test that fails leaves no container behind).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .redisserver import in_ci


@functools.cache
def _unshare() -> tuple[str, str]:
    """(the path of ``unshare``, why it cannot make a pid namespace here: '' if it can)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "", "unshare is not installed (util-linux)"
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    if probe.returncode:
        return unshare, probe.stderr.decode().strip() or f"exit code {probe.returncode}"
    return unshare, ""


def in_a_container(script: str, *args: str) -> subprocess.Popen[str]:
    """Run ``script`` (Python source, given ``args``) in a pid namespace of its own; its
    stdin and stdout are pipes (text). Skipped where namespaces cannot be made; a failure
    under CI as root, where they can."""
    unshare, why = _unshare()
    if not why:
        command = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc"]
        return subprocess.Popen(
            [*command, sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
    if in_ci() and os.geteuid() == 0:
        pytest.fail(f"cannot make a pid namespace as root under CI: {why}")
    pytest.skip(f"cannot make a pid namespace here: {why}")


def inner_pid(outer: subprocess.Popen[str], wait: float = 10.0) -> int:
    """The host's pid of the process ``unshare --fork`` started (pid 1 of its namespace)."""
    import time

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == outer.pid:
                return int(entry.name)
        time.sleep(0.01)
    raise AssertionError(f"no child of unshare (pid {outer.pid}) within {wait} s")
