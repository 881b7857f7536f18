"""The nemesis workloads behind HTTP routes, for real gunicorn workers.

Configured from the environment like the demo (``FLASK_CACHE_TYPE``,
``FLASK_CACHE_DIR``, ``FLASK_CACHE_REDIS_URL``, ``FLASK_CACHEKIT_LEASE`` ...).
``/op/<kind>?arg=...&id=...`` runs one operation and answers its outcome, its
value and the worker's pid. With ``NEMESIS_NOTES`` (a folder) a lock holder's
notes (grant, exit) are written there under the client's operation ``id`` the
moment they happen, so a worker killed inside its section still leaves them.
"""

from __future__ import annotations

import os
import random
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_caching import Cache

from .history import NoteFile
from .workloads import run_op

app = Flask(__name__)
app.config.from_mapping(CACHE_TYPE="FileSystemCache", CACHE_THRESHOLD=0, CACHE_DEFAULT_TIMEOUT=0)
app.config.from_prefixed_env()
cache = Cache(app)
rng = random.Random()
notes = NoteFile(os.environ["NEMESIS_NOTES"]) if os.environ.get("NEMESIS_NOTES") else None


@app.get("/")
def index() -> ResponseReturnValue:
    return jsonify(ok=True)


@app.get("/op/<kind>")
def op(kind: str) -> ResponseReturnValue:
    arg = request.args.get("arg", "")
    op_id = request.args.get("id", "")

    def note(data: dict[str, Any]) -> None:
        if notes is not None and op_id:
            notes.write(op_id, data)

    outcome, value = run_op(cache, kind, arg, rng, note)
    return jsonify(outcome=outcome, value=value, pid=os.getpid())
