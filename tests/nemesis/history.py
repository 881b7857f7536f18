"""A history of operations, recorded as they happen, in JSON lines a kill -9 cannot corrupt.

Each operation writes an ``invoke`` line before it starts and a completion
line after: ``ok`` (it happened, with its result), ``fail`` (it certainly did
not happen: a lock timeout, a refused update) or ``info`` (unknown: the
storage did not answer, the client was cut off). An operation whose process
was killed has an ``invoke`` line only and counts as ``info``. Lines are
written with one ``write`` each to a file opened for appending, so a killed
process loses at most the line it had not written yet.
"""

from __future__ import annotations

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


@dataclass
class Op:
    """One operation as the checker sees it."""

    id: str
    kind: str  # incr, append, transfer, section
    arg: Any = None
    outcome: str = INFO
    value: Any = None
    began: float = 0.0  # time.monotonic(): one clock for every process of the machine
    ended: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Writes one process's operations to ``<folder>/<pid>.jsonl``; thread-safe."""

    def __init__(self, folder: Path) -> None:
        self._fd = os.open(folder / f"{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._lock = threading.Lock()
        self._next = 0
        #: Distinguishes this process from an earlier one that had the same pid.
        self.nonce = secrets.token_hex(4)

    def _write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())

    @contextmanager
    def op(self, kind: str, arg: Any = None) -> Iterator[dict[str, Any]]:
        """Record an operation; the block sets ``result["outcome"]`` and ``result["value"]``."""
        with self._lock:
            self._next += 1
            op_id = f"{os.getpid()}-{self.nonce}-{self._next}"
        began = time.monotonic()
        self._write({"id": op_id, "kind": kind, "arg": arg, "began": began})
        result: dict[str, Any] = {"outcome": INFO, "value": None}
        try:
            yield result
        finally:
            self._write({"id": op_id, **result, "ended": time.monotonic()})


def load(folder: Path) -> list[Op]:
    """Every operation recorded in ``folder``, in the order they began."""
    ops: dict[str, Op] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by kill -9: the op stays unknown
                continue
            found = ops.get(record["id"])
            if found is None:
                ops[record["id"]] = Op(
                    record["id"], record["kind"], record.get("arg"), began=record["began"]
                )
            else:
                found.outcome = record.get("outcome", INFO)
                found.value = record.get("value")
                found.ended = record.get("ended", 0.0)
                found.extra = record.get("extra") or {}
    return sorted(ops.values(), key=lambda op: op.began)


def merge(*histories: Iterable[Op]) -> list[Op]:
    return sorted((op for history in histories for op in history), key=lambda op: op.began)
