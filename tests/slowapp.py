"""The demo app plus two routes for fault tests: a worker stuck inside an update.

Served by gunicorn in ``test_gunicorn.py`` as ``tests.slowapp:app``.
"""

from __future__ import annotations

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
