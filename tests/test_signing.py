"""Signed values (cachekit.signing): a value planted in the cache never runs code in the app.

Every test plants its values through the backend's own storage (the file, the
LMDB store, the Redis server), as an attacker who can write there would, and
checks that the planted pickle never ran: its ``__reduce__`` would create a
file, which must never exist.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from cachelib import FileSystemCache, RedisCache, SimpleCache
from flask import Flask
from flask_caching import Cache

import cachekit
from cachekit import CacheKit, CorruptValue, LMDBCache, SerializationError, TamperedValue
from cachekit.doctor import diagnose
from cachekit.errors import CachekitError, ConfigurationError
from cachekit.limits_storage import CachekitStorage
from cachekit.resolve import strategy_for
from cachekit.signing import MAGIC, OVERHEAD, Codec, install

from .conftest import BACKENDS

SIGNED_KINDS = [
    "FileSystemCache",
    "LMDBCache",
    "RedisCache",
    "RedisSentinelCache",
    "RedisClusterCache",
    "ValkeyCache",
]
#: The kinds the finer tests run on: one of each stored form.
FORMS = ["FileSystemCache", "LMDBCache", "RedisCache"]


class Planted:
    """A pickle whose ``__reduce__`` creates ``path``: proof that it was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


# -- the backend's storage, reached around cachekit ------------------------------------


def plant(backend: Any, key: str, form: bytes) -> None:
    """Store ``form`` (the value's bytes, after any expiry header) at ``key``, raw."""
    if isinstance(backend, LMDBCache):
        store = backend._store
        with store.writing(len(form) + 8) as txn:
            txn.put(store.key(key), struct.pack("<I", 0) + form)
    elif isinstance(backend, FileSystemCache):
        with open(backend._get_filename(key), "wb") as out:
            out.write(struct.pack("I", 0) + form)
    else:
        backend._write_client.set(backend._get_prefix() + key, form)


def raw(backend: Any, key: str) -> bytes | None:
    """The stored bytes of ``key`` (after any expiry header), or None."""
    if isinstance(backend, LMDBCache):
        stored = backend._store.get(backend._store.key(key))
        return None if stored is None else stored[4:]
    if isinstance(backend, FileSystemCache):
        try:
            with open(backend._get_filename(key), "rb") as found:
                return found.read()[4:]
        except FileNotFoundError:
            return None
    found = backend._write_client.get(backend._get_prefix() + key)
    return None if found is None else bytes(found)


def pickle_form(backend: Any, value: Any) -> bytes:
    """``value`` in the backend's unsigned (pre-signing) form."""
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)  # (as cachelib and cachekit write)
    if isinstance(backend, LMDBCache):
        return b"\x00" + data
    if isinstance(backend, FileSystemCache):
        return data
    return b"!" + data


def envelope_form(backend: Any, envelope: bytes) -> bytes:
    return b"\x03" + envelope if isinstance(backend, LMDBCache) else envelope


def make_app(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, **config: Any
) -> tuple[Flask, Cache, Any]:
    """An app whose Cache serves a fresh backend of ``kind``, with CacheKit on it."""
    backend = BACKENDS[kind](request, tmp_path)
    return app_on(backend, **{"SECRET_KEY": "current secret", **config})


def app_on(backend: Any, **config: Any) -> tuple[Flask, Cache, Any]:
    app = Flask(__name__)
    app.config.update(config)
    cache = Cache()
    cache.init_app(app, config={"CACHE_TYPE": "NullCache", "CACHE_NO_NULL_WARNING": True})
    app.extensions["cache"][cache] = backend
    CacheKit(cache).init_app(app)
    return app, cache, backend


def twin(backend: Any, request: pytest.FixtureRequest) -> Any:
    """A second backend instance over the same storage (another worker's)."""
    if isinstance(backend, LMDBCache):
        return LMDBCache(backend.directory)
    if isinstance(backend, FileSystemCache):
        return FileSystemCache(backend._path, threshold=0)
    url = request.getfixturevalue("redis_url")
    return RedisCache(host=redis.Redis.from_url(url), key_prefix=backend.key_prefix)


def tampered(cache: Cache) -> int:
    return int(cachekit.statistics(cache, merged=False)["tampered"])


# -- a planted pickle, everywhere the app reads ----------------------------------------


@pytest.mark.parametrize("kind", SIGNED_KINDS)
def test_a_planted_pickle_never_runs(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    app, cache, backend = make_app(request, tmp_path, kind)
    marker = tmp_path / "pwned"
    evil = pickle_form(backend, Planted(marker))
    calls: list[int] = []
    memo_name = f"signing-{uuid.uuid4().hex}"

    @cachekit.memoize(cache, timeout=60, name=memo_name)
    def price(item: str) -> int:
        calls.append(1)
        return len(item)

    @app.get("/page")
    @cachekit.cached(cache, timeout=60)
    def page() -> str:
        calls.append(2)
        return "fresh page"

    storage = CachekitStorage(cache=cache)
    with app.app_context():
        # A plain key: cache.get refuses it, naming the key.
        plant(backend, "plain", evil)
        with pytest.raises(TamperedValue) as refused:
            cache.get("plain")
        assert refused.value.key == "plain" and refused.value.reason == "unsigned"
        with pytest.raises(TamperedValue, match="'plain'"):
            cache.get_many("other", "plain")

        # A helper's key: update refuses it, and writes nothing.
        plant(backend, "state", evil)
        with pytest.raises(TamperedValue) as refused:
            cachekit.update(cache, "state", lambda value: value)
        assert refused.value.key == "state"
        assert raw(backend, "state") == evil

        # A memoized function's key: recomputed over the planted value, counted.
        assert price("apple") == 5
        plant(backend, price.cache_key("apple"), evil)
        assert price("apple") == 5
        assert calls == [1, 1]
        figures = cachekit.statistics(cache, merged=False)["memo"][memo_name]
        assert figures["tampered"] >= 1 and figures["computations"] == 2  # (read, then re-read)

        # A cached view's key: recomputed too.
        client = app.test_client()
        assert client.get("/page").text == "fresh page"
        plant(backend, page.cache_key("/page", []), evil)
        assert client.get("/page").text == "fresh page"
        assert calls.count(2) == 2

        # A rate limit's record (cachekit://).
        storage.incr("client", 60)
        name = next(
            name
            for name in (
                "cachekit:limits:client#fixed",
                "cachekit:limits:0:client#fixed",
            )
            if raw(backend, name) is not None
        )
        plant(backend, name, evil)
        with pytest.raises(CachekitError) as refused_hit:
            storage.incr("client", 60)
        if kind in ("FileSystemCache", "LMDBCache"):  # one update per hit: decoded, refused
            assert isinstance(refused_hit.value, TamperedValue)
        # (Redis counts in a Lua script, which never decodes a value: INCRBY refuses it.)
        assert raw(backend, name) == evil

        assert not marker.exists()
        assert tampered(cache) >= 5


@pytest.mark.parametrize("kind", SIGNED_KINDS)
def test_values_are_signed_and_ints_stay_plain(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    app, cache, backend = make_app(request, tmp_path, kind)
    with app.app_context():
        cache.set("dict", {"a": (1, b"x")})
        assert cache.get("dict") == {"a": (1, b"x")}
        assert cachekit.update(cache, "list", lambda v: [*v, 1], default=[]) == [1]
        assert cachekit.incr(cache, "n", 5) == 5 and cache.get("n") == 5
        stored = raw(backend, "dict")
        assert stored is not None
        assert stored[1 if kind == "LMDBCache" else 0 :].startswith(MAGIC)
        counter = raw(backend, "n")
        if kind.startswith(("Redis", "Valkey")):
            assert counter == b"5"  # plain ASCII: one INCRBY, parsed as an int
        elif kind == "LMDBCache":
            assert counter is not None and counter[0] == 1  # LMDB's native int
        else:
            assert counter is not None and counter.startswith(MAGIC)
        with cachekit.transaction(cache, "list") as txn:
            txn["list"].append(2)
        assert cache.get("list") == [1, 2]
        assert cachekit.get_or_compute(cache, "computed", lambda: {"v": 1}) == {"v": 1}
        assert cache.get("computed") == {"v": 1}
        assert tampered(cache) == 0


def test_flask_cachings_own_memoize_calls_the_function(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    app, cache, backend = make_app(request, tmp_path, "FileSystemCache")
    marker = tmp_path / "pwned"
    calls = []

    @cache.memoize(timeout=60)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    with app.app_context():
        assert double(2) == 4 and double(2) == 4 and calls == [2]
        key = double.make_cache_key(double.uncached, 2)
        plant(backend, key, pickle_form(backend, Planted(marker)))
        assert double(2) == 4 and calls == [2, 2]  # Flask-Caching logs the error, calls it
    assert not marker.exists()


# -- rotation --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMS)
def test_a_rolling_restart_with_a_new_key_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    old_app, old_cache, backend = make_app(request, tmp_path, kind, SECRET_KEY="old")
    new_app, new_cache, _ = app_on(
        twin(backend, request), SECRET_KEY="new", SECRET_KEY_FALLBACKS=["older", "old"]
    )
    with old_app.app_context():
        cache_set = {"written": "by an old worker"}
        old_cache.set("shared", cache_set)
        cachekit.update(old_cache, "state", lambda v: v + 1, default=0)
    with new_app.app_context():  # a new worker reads the old workers' values
        assert new_cache.get("shared") == cache_set
        assert cachekit.update(new_cache, "state", lambda v: v + 1, default=0) == 2
        new_cache.set("fresh", "by a new worker")
    after_app, after_cache, _ = app_on(twin(backend, request), SECRET_KEY="new")
    with after_app.app_context():  # the fallback dropped: only the new key counts
        assert after_cache.get("fresh") == "by a new worker"
        assert cache_get_refused(after_cache, "shared").reason == "signature"
    with old_app.app_context():  # an old worker still running cannot read the new key
        assert cache_get_refused(old_cache, "fresh").reason == "signature"


def cache_get_refused(cache: Cache, key: str) -> TamperedValue:
    with pytest.raises(TamperedValue) as refused:
        cache.get(key)
    assert refused.value.key == key
    return refused.value


# -- JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORMS)
def test_the_json_serializer_stores_no_pickle(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    app, cache, backend = make_app(request, tmp_path, kind, CACHEKIT_SERIALIZER="json")
    value = {"tuple": (1, 2), "bytes": b"\x00\xff", "nested": [{"a": None}]}
    with app.app_context():
        cache.set("v", value)
        assert cache.get("v") == value
        stored = raw(backend, "v")
        assert stored is not None and MAGIC + b"j" in stored[:5]
        assert b'"nested"' in stored
        assert cachekit.update(cache, "u", lambda v: {**v, "n": v["n"] + 1}, {"n": 0}) == {"n": 1}
        assert cachekit.incr(cache, "count") == 1

        @cachekit.memoize(cache, timeout=60, name=f"json-{uuid.uuid4().hex}")
        def pair(x: int) -> tuple[int, int]:
            return (x, x)

        assert pair(3) == (3, 3) and pair(3) == (3, 3)
        with pytest.raises(SerializationError):
            cachekit.update(cache, "u", lambda v: {1, 2})
        assert cache.get("u") == {"n": 1}
        with pytest.raises(SerializationError):
            cache.set("s", object())
        # A signed pickle (this app's key, pickle mode) is never unpickled in json mode.
        marker = tmp_path / "pwned"
        envelope = Codec(["current secret"], sign=True).seal(Planted(marker))
        plant(backend, "p", envelope_form(backend, envelope))
        with pytest.raises(CorruptValue, match="reads no pickle"):
            cachekit.update(cache, "p", lambda v: v)
    assert not marker.exists()


def test_json_needs_signing(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CACHEKIT_SERIALIZER"):
        app_on(FileSystemCache(str(tmp_path), threshold=0), CACHEKIT_SERIALIZER="json")


# -- bad input -------------------------------------------------------------------------


def bad_forms(marker: Path) -> dict[str, Callable[[Codec], bytes]]:
    """Each bad input, as an envelope made with this app's codec (``current secret``)."""
    evil = pickle.dumps(Planted(marker))

    def other_key(_: Codec) -> bytes:
        return Codec(["another secret"], sign=True).seal(Planted(marker))

    def truncated(codec: Codec) -> bytes:
        return codec.seal("harmless")[: OVERHEAD - 5]

    def other_bytes(codec: Codec) -> bytes:
        honest = codec.seal("harmless")
        return honest[:OVERHEAD] + evil  # a real signature, over other bytes

    def empty(_: Codec) -> bytes:
        return b""

    return {
        "unknown key": other_key,
        "truncated signature": truncated,
        "signature over other bytes": other_bytes,
        "empty value": empty,
    }


@pytest.mark.parametrize(
    "bad", ["unknown key", "truncated signature", "signature over other bytes", "empty value"]
)
@pytest.mark.parametrize("kind", FORMS)
def test_bad_input_is_a_clear_error(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, bad: str
) -> None:
    app, cache, backend = make_app(request, tmp_path, kind)
    marker = tmp_path / "pwned"
    codec = Codec(["current secret"], sign=True)
    form = bad_forms(marker)[bad](codec)
    stored = form if bad == "empty value" and kind == "LMDBCache" else envelope_form(backend, form)
    if bad == "empty value" and kind == "LMDBCache":
        stored = b"\x03"  # the kind byte of an envelope, and nothing after it
    plant(backend, "k", stored)
    with app.app_context():
        with pytest.raises(TamperedValue) as refused:
            cache.get("k")
        assert refused.value.key == "k"
        with pytest.raises(TamperedValue):
            cachekit.update(cache, "k", lambda v: "overwritten")
        with pytest.raises(TamperedValue):
            with cachekit.transaction(cache, "k"):
                pass
        assert raw(backend, "k") == stored  # nothing overwritten
        assert tampered(cache) == 3
    assert not marker.exists()


@pytest.mark.parametrize("kind", FORMS)
def test_a_value_checked_before_is_checked_again_once_its_bytes_differ(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """An envelope remembered as checked (made, then read) vouches for its own bytes only.

    The planted value reuses the remembered envelope's signature, so a memo
    keyed by the signature alone would take it: the payload is compared too.
    """
    app, cache, backend = make_app(request, tmp_path, kind)
    marker = tmp_path / "pwned"
    with app.app_context():
        cache.set("k", "harmless")
        assert cache.get("k") == "harmless"  # made here, then read: not hashed again
        honest = raw(backend, "k")
        assert honest is not None
        envelope = honest[1:] if kind == "LMDBCache" else honest
        assert envelope[:3] == MAGIC
        planted = envelope[:OVERHEAD] + pickle.dumps(Planted(marker))
        plant(backend, "k", envelope_form(backend, planted))
        with pytest.raises(TamperedValue) as refused:
            cache.get("k")
        assert refused.value.reason == "signature"
        plant(backend, "k", honest)  # the genuine bytes are still read, as before
        assert cache.get("k") == "harmless"
        assert tampered(cache) == 1
    assert not marker.exists()


def test_the_checked_envelopes_are_bounded() -> None:
    """Envelopes longer than TRUSTED_SIZE are not kept, and all those kept fit TRUSTED_BUDGET."""
    from cachekit import signing

    codec = Codec(["current secret"], sign=True)
    trusted = codec._trusted
    big = codec.seal(b"x" * (signing.TRUSTED_SIZE + 1))
    assert not trusted.holds(big[4:OVERHEAD], big, len(big))
    assert codec.open(big) == b"x" * (signing.TRUSTED_SIZE + 1)  # checked, each time
    assert not trusted.holds(big[4:OVERHEAD], big, len(big))
    made = [codec.seal(os.urandom(signing.TRUSTED_SIZE - 100)) for _ in range(100)]
    assert trusted._size <= signing.TRUSTED_BUDGET
    kept = trusted._envelopes.values()
    assert sum(len(e) + signing.ENTRY_OVERHEAD for e in kept) == trusted._size
    # The same value sealed again is kept once, counted once.
    before = trusted._size
    again = codec.seal(b"tiny")
    codec.seal(b"tiny")
    assert trusted._size == before + len(again) + signing.ENTRY_OVERHEAD
    oldest = made[0]
    assert not trusted.holds(oldest[4:OVERHEAD], oldest, len(oldest))  # forgotten when full
    assert trusted.holds(made[-1][4:OVERHEAD], made[-1], len(made[-1]))
    assert codec.open(made[0]) == pickle.loads(made[0][OVERHEAD:])  # and checked again
    # Another key's codec never takes this one's envelopes on trust.
    with pytest.raises(cachekit.errors.Refused):
        Codec(["another secret"], sign=True).open(made[-1])


@pytest.mark.parametrize("kind", FORMS)
def test_an_oversize_value_is_refused_both_ways(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    app, cache, backend = make_app(request, tmp_path, kind)
    codec = backend.__dict__["_cachekit_codec"]
    with app.app_context():
        cache.set("k", "small")
        codec.max_size = 1000  # (the limit is Redis's 512 MiB: lowered for the test)
        with pytest.raises(SerializationError, match="longer than"):
            cachekit.update(cache, "k", lambda v: "x" * 2000)
        assert cache.get("k") == "small"  # the old value kept
        plant(
            backend,
            "big",
            envelope_form(backend, Codec(["current secret"], sign=True).seal("y" * 2000)),
        )
        with pytest.raises(TamperedValue) as refused:
            cache.get("big")
        assert refused.value.reason == "oversize"


# -- upgrading: unsigned values, signing off -------------------------------------------


@pytest.mark.parametrize("kind", FORMS)
def test_unsigned_values_per_setting(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    app, cache, backend = make_app(request, tmp_path, kind, CACHEKIT_UNSIGNED="miss")
    with app.app_context():
        plant(backend, "old", pickle_form(backend, Planted(marker)))
        with caplog.at_level(logging.WARNING, logger="cachekit.signing"):
            assert cache.get("old") is None
            assert cache.get("old") is None
        assert sum("'old'" in r.getMessage() for r in caplog.records) == 1  # logged once
        if kind == "RedisCache":
            # Redis's compare-and-set compares with the bytes there: the update refuses them
            # (nothing decoded, nothing written); a plain write replaces them.
            with pytest.raises(TamperedValue):
                cachekit.update(cache, "old", lambda v: v + 1, default=0)
            cache.delete("old")
        assert cachekit.update(cache, "old", lambda v: v + 1, default=0) == 1  # asked: replaced
        assert cache.get("old") == 1
        assert cachekit.statistics(cache, merged=False)["unsigned"] >= 3
    assert not marker.exists()

    app, cache, backend = make_app(request, tmp_path / "accept", kind, CACHEKIT_UNSIGNED="accept")
    with app.app_context():
        plant(backend, "old", pickle_form(backend, {"legacy": True}))
        assert cache.get("old") == {"legacy": True}
        assert cachekit.update(cache, "old", lambda v: {**v, "n": 1}) == {"legacy": True, "n": 1}
        assert raw(backend, "old")[1 if kind == "LMDBCache" else 0 :].startswith(MAGIC)  # type: ignore[index]
        assert cachekit.statistics(cache, merged=False)["unsigned"] == 2


@pytest.mark.parametrize("kind", FORMS)
def test_signing_off_writes_todays_form_and_reads_signed_values(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    on_app, on_cache, backend = make_app(request, tmp_path, kind)
    off_app, off_cache, off_backend = app_on(
        twin(backend, request), SECRET_KEY="current secret", CACHEKIT_SIGN_VALUES=False
    )
    with off_app.app_context():
        off_cache.set("off", {"v": 1})
        assert raw(backend, "off") == pickle_form(backend, {"v": 1})  # exactly as before
    with on_app.app_context():
        on_cache.set("on", {"v": 2})
    with off_app.app_context():
        assert off_cache.get("on") == {"v": 2}  # verified with the key it has
        assert cachekit.update(off_cache, "on", lambda v: {**v, "w": 3}) == {"v": 2, "w": 3}
        assert raw(backend, "on") == pickle_form(backend, {"v": 2, "w": 3})


def test_without_a_secret_key_values_are_not_signed_and_doctor_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FileSystemCache(str(tmp_path / "c"), threshold=0, default_timeout=0)
    with caplog.at_level(logging.WARNING):
        app, cache, _ = app_on(backend)
    assert any(
        "CACHEKIT_SIGN_VALUES" in r.getMessage() or "SECRET_KEY" in r.getMessage()
        for r in caplog.records
    )
    with app.app_context():
        cache.set("k", [1])
        assert raw(backend, "k") == pickle.dumps([1], pickle.HIGHEST_PROTOCOL)
    findings = diagnose(app, cache)
    assert any("not signed" in f.what and "SECRET_KEY" in f.fix for f in findings)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        app_on(FileSystemCache(str(tmp_path / "d"), threshold=0), CACHEKIT_SIGN_VALUES=True)


def test_doctor_reports_the_tampered_count(tmp_path: Path) -> None:
    backend = FileSystemCache(str(tmp_path / "c"), threshold=0, default_timeout=0)
    app, cache, _ = app_on(backend, SECRET_KEY="s")
    with app.app_context():
        plant(backend, "k", b"garbage")
        with pytest.raises(TamperedValue):
            cache.get("k")
        strategy_for(cache).flush_stats()
        assert cachekit.statistics(cache)["tampered"] == 1
    findings = diagnose(app, cache, live_counts=True)  # (as flask cachekit doctor does)
    assert any("1 stored value(s) failed their signature check" in f.what for f in findings)


def test_simple_cache_is_not_signed() -> None:
    backend = SimpleCache()
    codec = Codec(["s"], sign=True)
    reason = install(backend, codec)
    assert reason is not None and "one process" in reason
    app, cache, _ = app_on(backend, SECRET_KEY="s")
    with app.app_context():
        cache.set("k", {"v": 1})
        assert cache.get("k") == {"v": 1}
        assert diagnose(app, cache)  # (its per-process finding; nothing about signing)


def test_settings_are_checked(tmp_path: Path) -> None:
    for bad in (
        {"CACHEKIT_UNSIGNED": "ignore"},
        {"CACHEKIT_SERIALIZER": "yaml"},
        {"CACHEKIT_SIGN_VALUES": "perhaps"},
    ):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            app_on(FileSystemCache(str(tmp_path), threshold=0), SECRET_KEY="s", **bad)
    assert os.path.isdir(tmp_path)
