"""Demo app: every cachekit helper on a route, exact under ``gunicorn -w 4``.

Run: ``make demo`` (gunicorn, 4 workers, FileSystemCache in ``instance/cache``).
Configuration comes from the environment in the Flask way
(``Flask.config.from_prefixed_env``): ``FLASK_CACHE_TYPE=RedisCache``,
``FLASK_CACHE_DIR=/srv/cache``, ``FLASK_SECRET_KEY=...`` and so on.

Routes (all answer JSON):

- ``/hits``: the global counter a module global gets wrong under several workers;
- ``/inc``, ``/dec``, ``/reset``: a counter per client, the client id kept in
  Flask's session;
- ``/notes/add?item=X`` and ``/notes``: a shared dict of lists, edited in place
  inside a transaction;
- ``/transfer?amount=N`` and ``/accounts``: a transfer between two keys that
  never creates or destroys money;
- ``/expensive``: a slow value computed once by ``get_or_compute``, however many
  clients ask at once; it counts its computations with ``incr``;
- ``/quote?symbol=X``: a slow call (0.3 s) memoized with ``cachekit.memoize``:
  computed once however many clients miss together, served stale for a minute
  past its 10 s while one worker refreshes it, refreshed early when hot;
  ``/quote/invalidate`` forgets every quote on every worker (tag ``quotes``),
  ``/quote/computations?symbol=X`` counts the computations;
- ``/page``: a view cached with ``cachekit.cached``, keyed by path and query;
- ``/report``: a ``lock`` held around an ``update``;
- ``/boots``: how many processes imported the app (the master too, under
  ``--preload``, which uses cachekit before it forks the workers);
- ``/stats`` (JSON) and ``/stats/page`` (HTML): cachekit's figures, of every
  worker and of the one that answers;
- ``/resource``: a client made once per worker process (never shared across a
  fork) and a resource made per request and closed at its end.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, jsonify, render_template_string, request, session
from flask.typing import ResponseReturnValue

import cachekit
from cachekit.resources import PerProcess, PerRequest
from common import cache

demo = Blueprint("demo", __name__)


class DemoClient:
    """Stands for a database or pub/sub client: one per worker process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.id = uuid.uuid4().hex


class RequestAudit:
    """Stands for a per-request resource; closing it is counted in the shared cache."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex

    def close(self) -> None:
        cachekit.incr(cache, "audits-closed")


process_client = PerProcess(DemoClient)
request_audit = PerRequest("audit", RequestAudit)

OPENING_BALANCE = 1000


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Create the demo app; ``config`` overrides the defaults and the environment."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY="dev",  # set FLASK_SECRET_KEY in production; every worker must share it
        CACHE_TYPE="FileSystemCache",
        CACHE_DIR=os.path.join(app.instance_path, "cache"),
        CACHE_THRESHOLD=0,  # pruning would delete state; cachekit refuses a threshold
        CACHE_DEFAULT_TIMEOUT=300,  # for get_or_compute; cachekit state never expires unless asked
    )
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
    if app.config["CACHE_TYPE"] == "FileSystemCache":  # private: its files are pickles
        os.makedirs(app.config["CACHE_DIR"], mode=0o700, exist_ok=True)
    cache.init_app(app)
    app.register_blueprint(demo)
    request_audit.init_app(app)
    with app.app_context():
        try:
            cachekit.incr(cache, "boots")
        except cachekit.CachekitError as error:  # the app still starts: requests answer 503
            app.logger.error(
                "cachekit cannot use this cache: %s (run: flask cachekit doctor)", error
            )
    return app


def client_key(suffix: str) -> str:
    client = session.setdefault("client", uuid.uuid4().hex)
    return f"client:{client}:{suffix}"


@demo.errorhandler(cachekit.CachekitError)
def cachekit_error(error: cachekit.CachekitError) -> ResponseReturnValue:
    return jsonify(error=type(error).__name__, message=str(error)), 503


@demo.get("/")
def index() -> ResponseReturnValue:
    return jsonify(
        backend=type(cache.cache).__name__,
        routes=[
            "/hits",
            "/inc",
            "/dec",
            "/reset",
            "/notes",
            "/notes/add?item=X",
            "/transfer?amount=N",
            "/accounts",
            "/expensive",
            "/quote?symbol=X",
            "/quote/invalidate",
            "/quote/computations?symbol=X",
            "/page",
            "/report",
            "/boots",
            "/stats",
            "/stats/page",
            "/resource",
        ],
    )


@demo.get("/hits")
def hits() -> ResponseReturnValue:
    return jsonify(hits=cachekit.incr(cache, "hits"))


@demo.get("/inc")
def inc() -> ResponseReturnValue:
    return jsonify(count=cachekit.incr(cache, client_key("count")))


@demo.get("/dec")
def dec() -> ResponseReturnValue:
    return jsonify(count=cachekit.incr(cache, client_key("count"), -1))


@demo.get("/reset")
def reset() -> ResponseReturnValue:
    return jsonify(count=cachekit.update(cache, client_key("count"), lambda _: 0))


@demo.get("/notes/add")
def add_note() -> ResponseReturnValue:
    item = request.args.get("item", "")
    with cachekit.transaction(cache, "notes") as txn:
        notes = txn.setdefault("notes", {"items": [], "by_client": {}})
        notes["items"].append(item)  # in place: written back when the block ends
        client = session.setdefault("client", uuid.uuid4().hex)
        notes["by_client"][client] = notes["by_client"].get(client, 0) + 1
        count = len(notes["items"])
    return jsonify(count=count)


@demo.get("/notes")
def notes() -> ResponseReturnValue:
    return jsonify(cache.get("notes") or {"items": [], "by_client": {}})


@demo.get("/transfer")
def transfer() -> ResponseReturnValue:
    amount = request.args.get("amount", 1, type=int)
    with cachekit.transaction(cache, "account:a", "account:b") as txn:
        txn["account:a"] = txn.get("account:a", OPENING_BALANCE) - amount
        txn["account:b"] = txn.get("account:b", OPENING_BALANCE) + amount
        balances = dict(txn)
    return jsonify(balances)


@demo.get("/accounts")
def accounts() -> ResponseReturnValue:
    a, b = (cache.get(key) for key in ("account:a", "account:b"))
    return jsonify({"account:a": a, "account:b": b})


def slow_answer() -> dict[str, Any]:
    time.sleep(float(os.environ.get("DEMO_EXPENSIVE_SECONDS", "0.5")))
    return {"answer": 42, "computation": cachekit.incr(cache, "computations")}


@demo.get("/expensive")
def expensive() -> ResponseReturnValue:
    return jsonify(cachekit.get_or_compute(cache, "expensive", slow_answer, timeout=0))


#: The quote's computation time, freshness and staleness, in seconds (set by the tests).
QUOTE_SECONDS = float(os.environ.get("DEMO_QUOTE_SECONDS", "0.3"))
QUOTE_TIMEOUT = float(os.environ.get("DEMO_QUOTE_TIMEOUT", "10"))
QUOTE_STALE = float(os.environ.get("DEMO_QUOTE_STALE", "60"))


@cachekit.memoize(cache, timeout=QUOTE_TIMEOUT, stale=QUOTE_STALE, tags=("quotes",))
def quote(symbol: str) -> dict[str, Any]:
    """Stands for a slow call to another service; counts its computations with ``incr``."""
    time.sleep(QUOTE_SECONDS)
    computation = cachekit.incr(cache, f"quote-computations:{symbol}")
    return {"symbol": symbol, "computation": computation, "computed_at": round(time.time(), 3)}


@demo.get("/quote")
def get_quote() -> ResponseReturnValue:
    return jsonify(quote(request.args.get("symbol", "ACME")))


@demo.get("/quote/invalidate")
def invalidate_quotes() -> ResponseReturnValue:
    cachekit.invalidate(cache, "quotes")
    return jsonify(invalidated=["quotes"])


@demo.get("/quote/computations")
def quote_computations() -> ResponseReturnValue:
    symbol = request.args.get("symbol", "ACME")
    return jsonify(computations=cache.get(f"quote-computations:{symbol}") or 0)


@demo.get("/page")
@cachekit.cached(cache, timeout=QUOTE_TIMEOUT, stale=QUOTE_STALE)
def page() -> ResponseReturnValue:
    time.sleep(QUOTE_SECONDS)
    renders = cachekit.incr(cache, "page-renders")
    return jsonify(renders=renders, args=request.args.to_dict(flat=False))


@demo.get("/report")
def report() -> ResponseReturnValue:
    with cachekit.lock(cache, "report"):
        runs = cachekit.update(cache, "report", lambda r: {"runs": r["runs"] + 1}, {"runs": 0})
    return jsonify(runs)


@demo.get("/stats")
def stats() -> ResponseReturnValue:
    return jsonify(
        pid=os.getpid(),
        all_workers=cachekit.statistics(cache),
        this_worker=cachekit.statistics(cache, merged=False),
    )


STATS_PAGE = """<!doctype html>
<title>cachekit statistics</title>
<h1>cachekit statistics</h1>
<p>Every worker's figures, merged in the shared cache (flushed at most once a second),
beside those of the worker that answered (pid {{ pid }}).</p>
<table border="1" cellpadding="4">
<tr><th>figure</th><th>all workers</th><th>this worker</th></tr>
{% for name, value in all_workers.items() %}
<tr><td>{{ name }}</td><td>{{ value }}</td><td>{{ this_worker[name] }}</td></tr>
{% endfor %}
</table>
"""


@demo.get("/stats/page")
def stats_page() -> ResponseReturnValue:
    def flat(figures: dict[str, Any]) -> dict[str, Any]:
        operations = {f"operations: {op}": n for op, n in figures.pop("operations").items()}
        memo = {
            f"{function}: {name}": n
            for function, counts in figures.pop("memo").items()
            for name, n in counts.items()
        }
        return {**operations, **figures, **memo}

    return render_template_string(
        STATS_PAGE,
        pid=os.getpid(),
        all_workers=flat(cachekit.statistics(cache)),
        this_worker=flat(cachekit.statistics(cache, merged=False)),
    )


@demo.get("/resource")
def resource() -> ResponseReturnValue:
    client = process_client()
    return jsonify(
        worker=os.getpid(),
        client={"pid": client.pid, "id": client.id},
        audit=request_audit().id,
    )


@demo.get("/boots")
def boots() -> ResponseReturnValue:
    return jsonify(boots=cache.get("boots"))


app = create_app()
