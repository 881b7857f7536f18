"""The nemesis workloads behind HTTP routes, for real gunicorn workers.

Configured from the environment like the demo (``FLASK_CACHE_TYPE``,
``FLASK_CACHE_DIR``, ``FLASK_CACHE_REDIS_URL``, ``FLASK_CACHEKIT_LEASE`` ...).
``/op/<kind>?arg=...`` runs one operation and answers its outcome and value.
"""

from __future__ import annotations

import random

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_caching import Cache

from .workloads import run_op

app = Flask(__name__)
app.config.from_mapping(CACHE_TYPE="FileSystemCache", CACHE_THRESHOLD=0, CACHE_DEFAULT_TIMEOUT=0)
app.config.from_prefixed_env()
cache = Cache(app)
rng = random.Random()


@app.get("/")
def index() -> ResponseReturnValue:
    return jsonify(ok=True)


@app.get("/op/<kind>")
def op(kind: str) -> ResponseReturnValue:
    raw = request.args.get("arg", "")
    arg: object = bool(int(raw)) if kind == "transfer" else raw
    outcome, value = run_op(cache, kind, arg, rng)
    return jsonify(outcome=outcome, value=value)
