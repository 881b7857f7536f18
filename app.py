"""Demo app: every cachekit feature on a route, exact under ``gunicorn -w 4``.

Run: ``make demo`` (gunicorn, 4 workers, FileSystemCache in ``instance/cache``)
and open http://127.0.0.1:8000/. Configuration comes from the environment in
the Flask way (``Flask.config.from_prefixed_env``): ``FLASK_CACHE_TYPE=RedisCache``,
``FLASK_CACHE_DIR=/srv/cache``, ``FLASK_SECRET_KEY=...`` and so on.

State changes are POST (a form on ``/``, or ``curl -X POST``); their input
comes from the form or the query string. Bad input answers 400 with the
reason, storage trouble 503 with the reason in the log (``CACHEKIT_JSON_ERRORS``).

- ``/``: this page's index: links and forms;
- ``POST /hits`` (``GET``: read): the global counter a module global gets wrong
  under several workers;
- ``POST /inc``, ``/dec``, ``/reset`` and ``GET /count``: a counter per client,
  the client id kept in Flask's session;
- ``POST /notes`` (``item``) and ``GET /notes``: a shared dict of lists, edited
  in place inside a transaction;
- ``POST /transfer`` (``amount``) and ``GET /accounts``: a transfer between two
  keys that never creates or destroys money;
- ``/expensive``: a slow value computed once by ``get_or_compute``, however many
  clients ask at once; it counts its computations with ``incr``;
- ``/quote?symbol=X``: a slow call (0.3 s) memoized with ``cachekit.memoize``:
  computed once however many clients miss together, served stale for a minute
  past its 10 s while one worker refreshes it, refreshed early when hot;
  ``POST /quote/invalidate`` forgets every quote on every worker (tag
  ``quotes``), ``/quote/computations?symbol=X`` counts the computations;
- ``/page``: a view cached with ``cachekit.cached``, keyed by path and query;
- ``POST /report``: a ``lock`` held around an ``update``;
- ``/limited``: a route rate limited by Flask-Limiter with ``cachekit://``
  (``DEMO_LIMIT``, 10 per minute; the strategy is ``RATELIMIT_STRATEGY``):
  exact across workers, with Flask-Limiter's headers;
- ``/boots``: how many times gunicorn created the app (once per worker, or
  once in the master with ``--preload``, which uses cachekit before forking);
  the ``flask`` commands do not count;
- ``/stats`` (JSON), ``/stats/page`` (HTML) and ``/metrics`` (Prometheus, with
  the ``prometheus`` extra): cachekit's figures, of every worker and of the one
  that answers;
- ``/resource``: a client made once per worker process (never shared across a
  fork) and a resource made per request and closed at its end;
- ``/health``: touches no state (for load balancers, and the benchmark's baseline).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
import uuid
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import TooManyRequests

import cachekit
from cachekit.extension import state_of
from cachekit.resources import PerProcess, PerRequest
from cachekit.stats import WAIT_BUCKETS, bound_text
from common import cache, kit, limiter

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
#: The largest amount one transfer may move.
MAX_TRANSFER = 1_000_000
MAX_NOTE = 200
SYMBOL = re.compile(r"[A-Za-z0-9.]{1,12}")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Create the demo app; ``config`` overrides the defaults and the environment.

    Raises :class:`cachekit.ConfigurationError` (from ``kit.init_app``) if the
    cache setup would lose state: gunicorn then refuses to boot, with the reason.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY="dev",  # set FLASK_SECRET_KEY in production; every worker must share it
        CACHE_TYPE="FileSystemCache",
        CACHE_DIR=os.path.join(app.instance_path, "cache"),
        CACHE_THRESHOLD=0,  # pruning would delete state; cachekit refuses a threshold
        CACHE_DEFAULT_TIMEOUT=0,  # plain cache.set keeps values too; caches name their timeouts
        CACHEKIT_JSON_ERRORS=True,  # 400 for bad input, 503 for storage trouble, as JSON
        RATELIMIT_STORAGE_URI="cachekit://",  # Flask-Limiter counts in the same cache
        RATELIMIT_HEADERS_ENABLED=True,  # X-RateLimit-Limit, -Remaining, -Reset, Retry-After
        DEMO_LIMIT="10 per minute",  # /limited's (FLASK_DEMO_LIMIT)
    )
    if importlib.util.find_spec("prometheus_client") is not None:
        app.config["CACHEKIT_METRICS_PATH"] = "/metrics"
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
    if app.config["CACHE_TYPE"] in ("FileSystemCache", "cachekit.LMDBCache"):
        os.makedirs(app.config["CACHE_DIR"], mode=0o700, exist_ok=True)  # private: pickles
    cache.init_app(app)
    kit.init_app(app)
    limiter.init_app(app)
    app.register_blueprint(demo)
    request_audit.init_app(app)
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        count_boot(app)
    return app


def count_boot(app: Flask) -> None:
    with app.app_context():
        try:
            cachekit.incr(cache, "boots")
        except cachekit.CachekitError as error:  # the app still starts: requests answer 503
            app.logger.error("cachekit cannot use the cache now: %s", error)


def client_key(suffix: str) -> str:
    client = session.setdefault("client", uuid.uuid4().hex)
    return f"client:{client}:{suffix}"


def bad_input(message: str) -> cachekit.InvalidArgument:
    """A 400 with ``message`` (the CacheKit extension's JSON error handler answers it)."""
    return cachekit.InvalidArgument(message)


def int_argument(name: str, default: int, low: int, high: int) -> int:
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_input(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise bad_input(f"{name} must be between {low} and {high}, not {value}")
    return value


INDEX = """<!doctype html>
<html lang="en"><meta charset="utf-8">
<title>cachekit demo</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
code { background: #f3f3f3; padding: 0 .2rem; }
form { display: inline-block; margin: .2rem .6rem .2rem 0; }
input[type=text] { width: 7rem; }
li { margin: .2rem 0; }
</style>
<h1>cachekit demo</h1>
{% if done %}<p id="done" style="background:#eef7f0;padding:.4rem .6rem">{{ done }}</p>{% endif %}
<p>Shared state on <code>{{ backend }}</code>, served by worker pid {{ pid }}.
Every figure below stays exact across every worker (and, on Redis, every host).</p>
<h2>Read</h2>
<ul>
{% for path, what in links %}<li><a href="{{ path }}">{{ path }}</a>: {{ what }}</li>
{% endfor %}</ul>
<h2>Change (POST)</h2>
<p>
{% set back %}<input type="hidden" name="back" value="1">{% endset %}
<form method="post" action="/hits">{{ back }}<button>count a hit</button></form>
<form method="post" action="/inc">{{ back }}<button>my counter +1</button></form>
<form method="post" action="/dec">{{ back }}<button>my counter -1</button></form>
<form method="post" action="/reset">{{ back }}<button>reset my counter</button></form>
</p><p>
<form method="post" action="/notes">{{ back }}<input type="text" name="item"
 placeholder="a note" required maxlength="{{ max_note }}"> <button>add note</button></form>
<form method="post" action="/transfer">{{ back }}<input type="text" name="amount" value="5">
 <button>transfer a to b</button></form>
</p><p>
<form method="post" action="/quote/invalidate">{{ back }}<button>invalidate every quote</button>
</form>
<form method="post" action="/report">{{ back }}<button>run the locked report</button></form>
</p>
<p>Each button comes back here with what it did. From a shell, the same as JSON:
<code>curl -X POST '{{ base }}/transfer?amount=5'</code>,
<code>curl '{{ base }}/accounts'</code>.</p>
"""

LINKS = [
    ("/hits", "the shared hit counter"),
    ("/count", "your own counter (kept in your session)"),
    ("/notes", "the shared notes"),
    (
        "/accounts",
        f"the two accounts, {OPENING_BALANCE} each to begin with (their sum never changes)",
    ),
    ("/expensive", "a slow value computed once, whoever asks"),
    ("/quote?symbol=ACME", "a memoized slow call: stale while one worker refreshes it"),
    ("/quote/computations?symbol=ACME", "how many times that quote was computed"),
    ("/page?a=1", "a view cached with cachekit.cached"),
    ("/limited", "a route limited by Flask-Limiter on cachekit:// (see its X-RateLimit headers)"),
    ("/boots", "how many times gunicorn created the app"),
    ("/resource", "a per-process client and a per-request resource"),
    ("/stats/page", "cachekit's statistics, explained"),
    ("/stats", "the same as JSON"),
]


@demo.get("/")
def index() -> ResponseReturnValue:
    links = list(LINKS)
    metrics = current_app.config.get("CACHEKIT_METRICS_PATH")
    if metrics:
        links.append((metrics, "the same for Prometheus"))
    return render_template_string(
        INDEX,
        backend=type(cache.cache).__name__,
        pid=os.getpid(),
        links=links,
        max_note=MAX_NOTE,
        base=request.host_url.rstrip("/"),  # the host and port the browser used
        done=request.args.get("done", "")[:300],
    )


@demo.after_app_request
def back_to_the_index(response: Response) -> Response:
    """A form of the index (``back``) returns to it (POST, redirect, GET) with what it did.

    curl and scripts, which send no ``back``, get the JSON itself; errors too
    come back to the index, said in words.
    """
    if request.method != "POST" or not request.form.get("back") or not response.is_json:
        return response
    answer = response.get_json(silent=True)
    if response.status_code >= 400 and isinstance(answer, dict):
        said = f"{request.path} failed ({response.status_code}): {answer.get('message', '')}"
    else:
        said = f"{request.path}: {json.dumps(answer, sort_keys=True)}"
    return redirect(url_for("demo.index", done=said), 303)  # type: ignore[return-value]


@demo.app_errorhandler(TooManyRequests)
def too_many_requests(error: TooManyRequests) -> ResponseReturnValue:
    """429 in the same JSON form as every other error (Flask-Limiter adds its headers)."""
    response = jsonify(
        error="TooManyRequests",
        message=f"rate limit exceeded ({error.description}); try again later",
    )
    response.status_code = 429
    return response


@demo.get("/limited")
@limiter.limit(lambda: str(current_app.config["DEMO_LIMIT"]))
def limited() -> ResponseReturnValue:
    """Rate limited by Flask-Limiter on ``cachekit://``: exact across every worker."""
    current = limiter.current_limit
    assert current is not None  # (this view has a limit)
    return jsonify(
        limit=str(current.limit),
        remaining=current.remaining,
        reset_at=current.reset_at,
        headers="X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset; 429s add Retry-After",
    )


@demo.get("/health")
def health() -> ResponseReturnValue:
    """For load balancers (and the benchmark's baseline): touches no state."""
    return jsonify(ok=True)


@demo.route("/hits", methods=["GET", "POST"])
def hits() -> ResponseReturnValue:
    if request.method == "POST":
        return jsonify(hits=cachekit.incr(cache, "hits"))
    return jsonify(hits=cache.get("hits") or 0)


@demo.post("/inc")
def inc() -> ResponseReturnValue:
    return jsonify(count=cachekit.incr(cache, client_key("count")))


@demo.post("/dec")
def dec() -> ResponseReturnValue:
    return jsonify(count=cachekit.incr(cache, client_key("count"), -1))


@demo.post("/reset")
def reset() -> ResponseReturnValue:
    return jsonify(count=cachekit.update(cache, client_key("count"), lambda _: 0))


@demo.get("/count")
def count() -> ResponseReturnValue:
    return jsonify(count=cache.get(client_key("count")) or 0)


@demo.post("/notes")
def add_note() -> ResponseReturnValue:
    item = request.values.get("item", "").strip()
    if not item or len(item) > MAX_NOTE:
        raise bad_input(f"item must be 1 to {MAX_NOTE} characters, not {len(item)}")
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


@demo.post("/transfer")
def transfer() -> ResponseReturnValue:
    amount = int_argument("amount", 1, 1, MAX_TRANSFER)
    with cachekit.transaction(cache, "account:a", "account:b") as txn:
        txn["account:a"] = txn.get("account:a", OPENING_BALANCE) - amount
        txn["account:b"] = txn.get("account:b", OPENING_BALANCE) + amount
        balances = dict(txn)
    return jsonify(balances)


@demo.get("/accounts")
def accounts() -> ResponseReturnValue:
    """Both balances; before the first transfer, the opening balances (never null)."""
    a, b = (cache.get(key) for key in ("account:a", "account:b"))
    return jsonify(
        {
            "account:a": OPENING_BALANCE if a is None else a,
            "account:b": OPENING_BALANCE if b is None else b,
        }
    )


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


def symbol_argument() -> str:
    symbol = request.args.get("symbol", "ACME")
    if not SYMBOL.fullmatch(symbol):
        raise bad_input(f"symbol must be 1 to 12 letters, digits or dots, not {symbol!r}")
    return symbol.upper()


@demo.get("/quote")
def get_quote() -> ResponseReturnValue:
    return jsonify(quote(symbol_argument()))


@demo.post("/quote/invalidate")
def invalidate_quotes() -> ResponseReturnValue:
    cachekit.invalidate(cache, "quotes")
    return jsonify(invalidated=["quotes"])


@demo.get("/quote/computations")
def quote_computations() -> ResponseReturnValue:
    return jsonify(computations=cache.get(f"quote-computations:{symbol_argument()}") or 0)


@demo.get("/page")
@cachekit.cached(cache, timeout=QUOTE_TIMEOUT, stale=QUOTE_STALE)
def page() -> ResponseReturnValue:
    time.sleep(QUOTE_SECONDS)
    renders = cachekit.incr(cache, "page-renders")
    return jsonify(renders=renders, args=request.args.to_dict(flat=False))


@demo.post("/report")
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


#: What each figure of the statistics page means.
EXPLAINED = {
    "locks_taken": "takings of a cachekit lock: of a key (on FileSystemCache and SimpleCache"
    " for incr, update and transaction; Redis and LMDBCache change a key with their own atomic"
    " operations and lock it only for a transaction or an update that kept losing races),"
    " of a computation (get_or_compute, memoize) or of lock()",
    "lock_waits": "of those, the takings that found the lock held and had to wait",
    "lock_wait_seconds": "the time those waits took, in all",
    "lock_wait_p50": "half of the waits took at most this long (waits are counted in buckets:"
    " this is the bucket's upper bound, not a measurement)",
    "lock_wait_p99": "99% of the waits took at most this long (a bucket's upper bound)",
    "lock_waits_over_10s": "waits longer than the largest bucket (10 s)",
    "lock_timeouts": "waits that ran out and raised LockTimeout",
    "retries": "optimistic updates (Redis, LMDBCache) tried again after a concurrent write",
    "computes": "values computed by get_or_compute",
    "computes_saved": "get_or_compute calls answered without computing",
    "limit_hits": "rate limit hits counted by Flask-Limiter through cachekit://",
    "limit_refusals": "of those, the hits refused (by a moving window or a sliding window"
    " counter; a fixed window's refusals are Flask-Limiter's reading of the count)",
}
MEMO_EXPLAINED = {
    "hits": "calls served a fresh value",
    "stale": "calls served a stale value while it was refreshed",
    "misses": "calls that found nothing usable",
    "joined": "of the misses, calls that waited for another caller's computation",
    "computations": "times the function ran to fill the cache",
    "refreshes": "background refreshes that stored a value",
    "early": "of those, refreshes started early (before expiry)",
    "refresh_errors": "refreshes that failed (the stale value was kept)",
    "errors": "calls that met a storage error and were answered uncached",
    "bypassed": "calls that skipped the cache (unless, a POST, Authorization)",
}

STATS_PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh }}">
<title>cachekit statistics</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .6rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.what { color: #555; font-size: 90%; }
</style>
<h1>cachekit statistics</h1>
<p>Every worker's figures, merged in the shared cache (each worker adds its counts at most
{{ "{:g}".format(interval) }} s after making them, idle or not), beside those of the worker
that answered (pid {{ pid }}). This page refreshes every {{ refresh }} s.
<a href="/">Back to the demo</a>.</p>
<h2>Operations</h2>
<table id="operations"><tr><th>helper</th><th>all workers</th><th>this worker</th></tr>
{% for name, n in all_workers.operations.items() %}
<tr><td><code>{{ name }}</code></td><td class="n">{{ "{:,}".format(n) }}</td>
<td class="n">{{ "{:,}".format(this_worker.operations[name]) }}</td></tr>
{% endfor %}</table>
<h2>Locks and computations</h2>
<table id="figures"><tr><th>figure</th><th>all workers</th><th>this worker</th><th>meaning</th></tr>
{% for name, all, mine in rows %}
<tr><td>{{ name }}</td><td class="n">{{ all }}</td><td class="n">{{ mine }}</td>
<td class="what">{{ explained[name] }}</td></tr>
{% endfor %}</table>
<h2>How long lock waits took (all workers)</h2>
{{ chart | safe }}
{% if memo %}
<h2>Memoized functions (all workers)</h2>
<table id="memo"><tr><th>function</th>{% for event in memo_events %}
<th title="{{ memo_explained[event] }}">{{ event }}</th>{% endfor %}</tr>
{% for function, counts in memo.items() %}
<tr><td><code>{{ function }}</code></td>{% for event in memo_events %}
<td class="n">{{ "{:,}".format(counts[event]) }}</td>{% endfor %}</tr>
{% endfor %}</table>
<ul>{% for event in memo_events %}<li><b>{{ event }}</b>: {{ memo_explained[event] }}</li>
{% endfor %}</ul>
{% endif %}
"""


def figure_rows(all_workers: dict[str, Any], this_worker: dict[str, Any]) -> list[list[str]]:
    """The page's rows: counts with thousands separators, percentiles as bounds."""

    def shown(figures: dict[str, Any], name: str) -> str:
        if name in ("lock_wait_p50", "lock_wait_p99"):
            at_most = figures[f"{name}_at_most_ms"]
            if at_most is None and figures["lock_waits"]:  # past the last bucket's bound
                return f"> {bound_text(WAIT_BUCKETS[-1])[3:]}"
            return bound_text(None if at_most is None else at_most / 1000)
        if name == "lock_wait_seconds":
            return f"{figures[name]:,.3f} s"
        return f"{figures[name]:,}"

    return [[name, shown(all_workers, name), shown(this_worker, name)] for name in EXPLAINED]


def wait_chart(buckets: list[dict[str, Any]], over: int) -> str:
    """An inline SVG bar chart of the lock-wait buckets; one scale, the largest bucket."""
    labels = [bound_text(bound) for bound in WAIT_BUCKETS] + ["> 10 s"]
    counts = [bucket["waits"] for bucket in buckets] + [over]
    top = max(counts) or 1
    bar_width, gap, height = 54, 6, 120
    width = len(counts) * (bar_width + gap)
    parts = [
        f'<svg id="wait-chart" xmlns="http://www.w3.org/2000/svg" width="{width}"'
        f' height="{height + 40}" font-family="sans-serif" font-size="10" role="img"'
        ' aria-label="lock waits by duration">'
    ]
    for i, (label, n) in enumerate(zip(labels, counts, strict=True)):
        x = i * (bar_width + gap)
        bar = round(height * n / top) if n else 0
        parts.append(
            f'<rect x="{x}" y="{height - bar + 12}" width="{bar_width}" height="{bar}"'
            f' fill="#2e8b57"><title>{n:,} waits {label}</title></rect>'
            f'<text x="{x + bar_width / 2}" y="{height - bar + 9}" text-anchor="middle">{n:,}'
            f'</text><text x="{x + bar_width / 2}" y="{height + 26}" text-anchor="middle">'
            f"{label.replace('<=', '&#8804;')}</text>"
        )
    parts.append("</svg>")
    if not sum(counts):
        parts.append("<p>No lock has had to wait yet.</p>")
    return "".join(parts)


@demo.get("/stats/page")
def stats_page() -> ResponseReturnValue:
    all_workers = cachekit.statistics(cache)
    this_worker = cachekit.statistics(cache, merged=False)
    memo = all_workers["memo"]
    return render_template_string(
        STATS_PAGE,
        pid=os.getpid(),
        refresh=2,
        interval=kit_interval(),
        all_workers=all_workers,
        this_worker=this_worker,
        rows=figure_rows(all_workers, this_worker),
        explained=EXPLAINED,
        chart=wait_chart(all_workers["lock_wait_buckets"], all_workers["lock_waits_over_10s"]),
        memo=memo,
        memo_events=list(MEMO_EXPLAINED),
        memo_explained=MEMO_EXPLAINED,
    )


def kit_interval() -> float:
    state = state_of(current_app)
    return state.settings.stats_interval if state else 1.0


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
    return jsonify(boots=cache.get("boots") or 0)


app = create_app()
