"""A history of operations, recorded as they happen, in JSON lines a kill -9 cannot corrupt.

Each operation writes an ``invoke`` line before it starts and a completion
line after: ``ok`` (it happened, with its result), ``fail`` (it certainly did
not happen: a lock timeout, a refused update) or ``info`` (unknown: the
storage did not answer, the client was cut off). An operation whose process
was killed has an ``invoke`` line only and counts as ``info``. Lines are
written with one ``write`` each to a file opened for appending, so a killed
process loses at most the line it had not written yet.

In between, an operation may write *notes*: a lock holder notes
``{"granted", "token", "pid"}`` the moment its lock is granted and ``{"left"}``
just before it releases it, so a holder killed inside its section is still
known to have held the lock (it has a grant and no ``left``). Behind HTTP,
the gunicorn worker writes the notes to its own file (:class:`NoteFile`), keyed
by the client's operation id, and :func:`attach_notes` joins them to the
client's history.

Invariants the checker relies on: a note's ``granted`` time is taken after
the grant and its ``left`` time before the release, so the recorded section
lies inside the time the lock was really held; every operation of a client
process carries that process's pid as its ``client`` (the first field of its
id).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"
#: A section that raised LeaseLost on exit: it ran, but knew it may have overlapped.
TOLD = "told"


@dataclass
class Op:
    """One operation as the checker sees it."""

    id: str
    kind: str  # open, incr, append, transfer, section, invalidate, memo
    arg: Any = None
    outcome: str = INFO
    value: Any = None
    began: float = 0.0  # time.monotonic(): one clock for every process of the machine
    ended: float = 0.0  # 0.0: never completed (its process was killed)
    extra: dict[str, Any] = field(default_factory=dict)  # "notes": what it noted meanwhile
    client: str = ""  # the client that ran it: a process's pid, or an HTTP client's name


@dataclass
class Pending:
    """An operation under way: the block sets ``outcome`` and ``value``; ``note`` writes at once."""

    id: str
    recorder: Recorder
    outcome: str = INFO
    value: Any = None

    def note(self, data: dict[str, Any]) -> None:
        self.recorder.write({"id": self.id, "note": data})


class Recorder:
    """Writes one process's operations to ``<folder>/<pid>.jsonl``; thread-safe."""

    def __init__(self, folder: Path) -> None:
        self._fd = os.open(folder / f"{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._lock = threading.Lock()
        self._next = 0
        #: Distinguishes this process from an earlier one that had the same pid.
        self.nonce = secrets.token_hex(4)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())

    @contextmanager
    def op(self, kind: str, arg: Any = None) -> Iterator[Pending]:
        """Record an operation; the block sets ``pending.outcome`` and ``pending.value``."""
        with self._lock:
            self._next += 1
            op_id = f"{os.getpid()}-{self.nonce}-{self._next}"
        began = time.monotonic()
        wall = time.time()  # (the process's wall clock: the clock_jump fault steps it)
        self.write({"id": op_id, "kind": kind, "arg": arg, "began": began, "wall": wall})
        pending = Pending(op_id, self)
        try:
            yield pending
        finally:
            self.write(
                {
                    "id": op_id,
                    "outcome": pending.outcome,
                    "value": pending.value,
                    "ended": time.monotonic(),
                }
            )


class NoteFile:
    """A gunicorn worker's notes, in ``<folder>/notes-<pid>.jsonl`` (opened again after a fork);
    ``name`` spells the file another way (``{pid}`` is the process's)."""

    def __init__(self, folder: str, name: str = "notes-{pid}.jsonl") -> None:
        self.folder = folder
        self.name = name
        self._fds: dict[int, int] = {}

    def write(self, op_id: str, data: dict[str, Any]) -> None:
        self.write_record({"id": op_id, "note": data})

    def write_record(self, record: dict[str, Any]) -> None:
        """Append ``record`` as a JSON line to this process's file, at once."""
        pid = os.getpid()
        fd = self._fds.get(pid)
        if fd is None:
            path = os.path.join(self.folder, self.name.format(pid=pid))
            fd = self._fds[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError:  # a line cut by kill -9: what it said stays unknown
            continue


def load(folder: Path) -> list[Op]:
    """Every operation recorded in ``folder``, in the order they began."""
    ops: dict[str, Op] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for record in _records(path):
            found = ops.get(record["id"])
            if found is None:
                if "kind" not in record:  # its invoke line was cut: nothing to attach to
                    continue
                ops[record["id"]] = Op(
                    record["id"],
                    record["kind"],
                    record.get("arg"),
                    began=record["began"],
                    client=record["id"].split("-", 1)[0],
                )
            elif "note" in record:
                found.extra.setdefault("notes", {}).update(record["note"])
            else:
                found.outcome = record.get("outcome", INFO)
                found.value = record.get("value")
                found.ended = record.get("ended", 0.0)
    return sorted(ops.values(), key=lambda op: op.began)


def attach_notes(history: list[Op], folder: Path) -> None:
    """Join the notes gunicorn workers wrote in ``folder`` to the operations they belong to."""
    by_id = {op.id: op for op in history}
    for path in sorted(folder.glob("notes-*.jsonl")):
        for record in _records(path):
            op = by_id.get(record.get("id", ""))
            if op is not None and isinstance(record.get("note"), dict):
                op.extra.setdefault("notes", {}).update(record["note"])


def merge(*histories: Iterable[Op]) -> list[Op]:
    return sorted((op for history in histories for op in history), key=lambda op: op.began)


@dataclass(frozen=True)
class Computation:
    """One computation of a memoized key: ``ended`` None if its process died in it."""

    key: str
    pid: int
    began: float
    ended: float | None
    #: When its COMPUTE stripe was granted (noted by the workload's strategy); None if not
    #: noted (then ``began``: the grant came just before, but for a pause or failover).
    granted: float | None = None

    @property
    def held_from(self) -> float:
        """When its COMPUTE stripe was held from."""
        return self.began if self.granted is None else min(self.granted, self.began)


def load_computations(folder: Path) -> list[Computation]:
    """Every computation noted in ``folder`` (``<pid>.computations``), in the order they began."""
    found: dict[tuple[int, float, str], Computation] = {}
    for path in sorted(folder.glob("*.computations")):
        for record in _records(path):
            try:
                granted = record.get("granted")
                done = Computation(
                    str(record["key"]),
                    int(record["pid"]),
                    float(record["began"]),
                    None,
                    None if granted is None else float(granted),
                )
            except (KeyError, TypeError, ValueError):
                continue
            ended = record.get("ended")
            identity = (done.pid, done.began, done.key)
            if ended is not None:
                before = found.get(identity)
                granted = done.granted if before is None else before.granted
                found[identity] = dataclasses.replace(done, ended=float(ended), granted=granted)
            else:
                found.setdefault(identity, done)
    return sorted(found.values(), key=lambda c: c.began)
