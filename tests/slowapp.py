"""The demo app plus two routes for fault tests: a worker stuck inside an update.

Served by gunicorn in ``test_gunicorn.py`` as ``tests.slowapp:app``.
"""

from __future__ import annotations

import os
import time

from flask.typing import ResponseReturnValue

import cachekit
from app import create_app
from common import cache

app = create_app()


def stuck(value: int | None) -> int:
    time.sleep(60)  # gunicorn's --timeout kills the worker long before
    return (value or 0) + 1000


@app.get("/stuck-update")
def stuck_update() -> ResponseReturnValue:
    return {"n": cachekit.update(cache, "n", stuck)}


@app.get("/n")
def n() -> ResponseReturnValue:
    return {"n": cachekit.incr(cache, "n")}


@app.get("/stuck-lock")
def stuck_lock() -> ResponseReturnValue:
    with cachekit.lock(cache, "L") as handle:
        cachekit.update(cache, "holder", lambda _: {"pid": os.getpid(), "token": handle.token})
        time.sleep(60)  # killed long before
    return {"left": True}


@app.get("/holder")
def holder() -> ResponseReturnValue:
    return cache.get("holder") or {}


@app.get("/locked")
def locked() -> ResponseReturnValue:
    with cachekit.lock(cache, "L", timeout=5) as handle:
        return {"token": handle.token}
