"""Stampede-proof decorators: :func:`memoize` for functions, :func:`cached` for views.

Calls are keyed the way Flask-Caching's decorators of the same names key
them (a function's qualified name and bound arguments; a view's path and
sorted query string), under keys of cachekit's own (values are not shared
with Flask-Caching's), and served through :mod:`cachekit.computed`: one
computation per miss across threads, workers and hosts, stale values served
while one caller refreshes, early refresh (XFetch), tags.

>>> from cachelib import SimpleCache
>>> cache = SimpleCache()
>>> @memoize(cache, timeout=60, tags=("prices",))
... def price(item: str, quantity: int = 1) -> int:
...     return 3 * quantity
>>> price("apple", 2), price("apple", quantity=2)
(6, 6)
>>> invalidate(cache, "prices")  # every value tagged "prices", on every worker

Keys: a memoized call's key is ``memo:<name>:<digest>``, ``<name>`` being
``<module>.<qualname>`` (or ``name=``) and the digest a SHA-256 of the
``repr`` of its bound arguments (defaults applied, so ``f(1)`` and
``f(x=1)`` share a key). The name identifies a function's values: two
functions with one qualified name (closures made by one factory that compute
different things) need a ``name=`` each, and a lambda must be given one. An
argument whose ``repr`` shows a memory address (``<... at 0x...>``, an object
without a ``__repr__`` of its own) is refused with
:class:`~cachekit.errors.InvalidArgument`: its key would differ in every
process, so the cache would never be shared. Give it a ``__repr__`` that names
its value, or pass ``key=``. A view's key is ``view:<name>:<digest>`` of the
request path and, with ``query_string=True``, its sorted query arguments.

Every decorated function carries the tag ``fn:<name>``: ``f.invalidate()``
forgets all its values, ``f.forget(*args)`` those of one call (a view's:
``view.forget(path, [(name, value), ...])``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Generic, ParamSpec, TypeVar, cast

from flask import make_response, request
from werkzeug.wrappers import Response

from . import computed
from .compat import watch_session
from .computed import Policy, fetch, fetch_async
from .errors import InvalidArgument
from .resolve import CacheLike, strategy_for
from .strategy import Timeout, check_key

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)

#: A ``repr`` that shows a memory address: the same value would get another key elsewhere.
_ADDRESS: Final = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
#: Values whose ``repr`` is their value: never scanned for addresses.
_PLAIN_TYPES: Final = (str, bytes, int, float, complex, bool, type(None))
#: The first item of a stored response.
RESPONSE_MARK: Final = "cachekit.response/1"
#: Statuses a view's response is cached with unless ``should_cache`` says otherwise.
CACHEABLE_STATUSES: Final = frozenset({200})
#: ``Vary`` values that do not make a response depend on who asks.
HARMLESS_VARY: Final = frozenset({"accept-encoding"})

Tags = Iterable[str] | Callable[..., Iterable[str]]


class Memoized(Generic[P, R]):
    """The type of a decorated function: call it as before; its cache through the methods.

    (The decorators return the function itself with these attributes added;
    this class only describes them to type checkers.)
    """

    __wrapped__: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError

    def forget(self, *args: Any, **kwargs: Any) -> None:
        """Forget the value of this call, after a computation of it in flight stored its own."""
        raise NotImplementedError

    def invalidate(self) -> None:
        """Forget every value of this function, on every worker and host."""
        raise NotImplementedError

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of this call (a view's: of a path and query pairs)."""
        raise NotImplementedError

    uncached: Callable[P, R]


def invalidate(cache: CacheLike, *tags: str) -> None:
    """Invalidate every value carrying one of ``tags``, on every worker and host, in O(1).

    Immediate: a call that starts after this returned never gets a value
    computed before, fresh or stale. Raises if the cache cannot be written
    (an invalidation is never dropped silently).
    """
    computed.invalidate(strategy_for(cache), tags)


def plain_parameters(signature: inspect.Signature) -> tuple[str, ...] | None:
    """The parameter names if every one is positional-or-keyword (the fast path), else None."""
    kinds = {parameter.kind for parameter in signature.parameters.values()}
    if kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD}:
        return tuple(signature.parameters)
    return None


def _address_shown(value: Any, depth: int = 0) -> str | None:
    """The address-showing ``repr`` of ``value`` or of something inside it; None if none.

    Strings and numbers are never scanned (their text is data); containers
    are looked into, other objects judged by their own ``repr``.
    """
    if isinstance(value, _PLAIN_TYPES):
        return None
    if depth < 8 and isinstance(value, (tuple, list, set, frozenset, dict)):
        items = value.items() if isinstance(value, dict) else ((item,) for item in value)
        for pair in items:
            for item in pair:
                found = _address_shown(item, depth + 1)
                if found:
                    return found
        return None
    match = _ADDRESS.search(repr(value))
    return match.group() if match else None


def argument_digest(
    name: str,
    signature: inspect.Signature,
    args: Any,
    kwargs: Any,
    plain: tuple[str, ...] | None = None,
) -> str:
    """The digest of a call's bound arguments (defaults applied); see the module for the rule.

    ``plain`` (from :func:`plain_parameters`) lets a call that passes every
    parameter positionally skip ``Signature.bind``: it binds the same pairs.
    """
    if plain is not None and not kwargs and len(args) == len(plain):
        pairs = tuple(zip(plain, args, strict=True))
    else:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        pairs = tuple(bound.arguments.items())
    text = repr(pairs)
    if " at 0x" in text:
        shown = _address_shown(pairs)
        if shown:
            raise InvalidArgument(
                f"cannot key a call of {name}: an argument's repr, {shown}, shows a memory"
                " address, so the key would differ in every worker; give its class a"
                " __repr__ that names its value, or pass key= to the decorator",
                function=name,
            )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _name_of(fn: Callable[..., Any], name: str | None, key: object) -> str:
    if name is not None:
        return check_key(name)
    qualified = f"{fn.__module__}.{fn.__qualname__}"
    if "<lambda>" in qualified and key is None:
        raise InvalidArgument(
            f"{qualified} is a lambda: every lambda of that scope has this name, so their"
            " values would mix; pass name= (or key=) to the decorator",
            function=qualified,
        )
    return qualified


def _checked_tags(tags: Iterable[str], whose: str) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes)):
        raise InvalidArgument(
            f"the tags of {whose} must be a collection of str, not the {type(tags).__name__}"
            f" {tags!r} (which would be read one character at a time)"
        )
    return tuple(sorted({check_key(tag) for tag in tags}))  # one order on every host


def _tags_of(name: str, tags: Tags) -> Callable[[Any, Any], tuple[str, ...]]:
    own = f"fn:{name}"
    if callable(tags):
        per_call = tags

        def of_call(args: Any, kwargs: Any) -> tuple[str, ...]:
            return (own, *_checked_tags(per_call(*args, **kwargs), name))

        return of_call
    fixed = (own, *_checked_tags(tags, name))
    return lambda args, kwargs: fixed


def memoize(
    cache: CacheLike,
    timeout: Timeout = None,
    *,
    stale: Timeout = 0,
    beta: float = 1.0,
    tags: Tags = (),
    unless: Callable[[], bool] | None = None,
    should_cache: Callable[[Any], bool] | None = None,
    key: Callable[..., str] | None = None,
    name: str | None = None,
    fail_open: bool = True,
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """Cache a function's results in ``cache``, with no stampede; sync or ``async def``.

    - ``timeout``: seconds a value is fresh (``None``: the cache's default
      timeout; ``0``: for ever).
    - ``stale``: seconds past that during which the old value is served at
      once while one background thread recomputes it.
    - ``beta``: early refresh (XFetch); 0 turns it off. See :mod:`cachekit.computed`.
    - ``tags``: strings, or a callable given the call's arguments that returns
      them; :func:`invalidate` with any of them forgets the value.
    - ``unless()``: true to call the function without the cache.
    - ``should_cache(value)``: false to return a value without storing it.
      ``None`` is a value like any other.
    - ``key(*args, **kwargs)``: the cache key, instead of the derived one.
    - ``name``: the function's name in keys, tags and statistics (default
      ``<module>.<qualname>``).
    - ``fail_open``: on backend trouble call the function and return its
      value (counted); ``False`` raises the error instead.
    """

    def decorate(fn: Callable[P, R]) -> Memoized[P, R]:
        named = _name_of(fn, name, key)
        policy = Policy.of(named, timeout, stale, beta, fail_open)
        signature = inspect.signature(fn)
        plain = plain_parameters(signature)
        tags_of = _tags_of(named, tags)
        prefix = f"memo:{named}:"

        def key_of(args: Any, kwargs: Any) -> str:
            if key is not None:
                return check_key(key(*args, **kwargs))
            return prefix + argument_digest(named, signature, args, kwargs, plain)

        wrapper: Any
        if inspect.iscoroutinefunction(fn):
            coroutine = cast(Callable[..., Awaitable[Any]], fn)

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                strategy = computed.resolved(cache, policy)
                if strategy is None or (unless is not None and unless()):
                    computed.count(strategy, policy, "bypassed")
                    return await coroutine(*args, **kwargs)
                return await fetch_async(
                    strategy,
                    key_of(args, kwargs),
                    lambda: coroutine(*args, **kwargs),
                    policy,
                    tags_of(args, kwargs),
                    should_cache,
                )

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                strategy = computed.resolved(cache, policy)
                if strategy is None or (unless is not None and unless()):
                    computed.count(strategy, policy, "bypassed")
                    return fn(*args, **kwargs)
                return fetch(
                    strategy,
                    key_of(args, kwargs),
                    lambda: fn(*args, **kwargs),
                    policy,
                    tags_of(args, kwargs),
                    should_cache,
                )

        _attach(wrapper, fn, cache, named, lambda *args, **kwargs: key_of(args, kwargs))
        return cast(Memoized[P, R], wrapper)

    return decorate


def _attach(
    wrapper: Any, fn: Callable[..., Any], cache: CacheLike, name: str, cache_key: Callable[..., str]
) -> None:
    """Give ``wrapper`` fn's name and docs, and the methods of :class:`Memoized`."""
    functools.update_wrapper(wrapper, fn)
    wrapper.cache_key = cache_key
    wrapper.forget = lambda *args, **kwargs: computed.forget(
        strategy_for(cache), cache_key(*args, **kwargs)
    )
    wrapper.invalidate = lambda: computed.invalidate(strategy_for(cache), (f"fn:{name}",))
    wrapper.uncached = fn


# -- views -----------------------------------------------------------------------------


def view_key(name: str, path: str, query: Iterable[tuple[str, str]], query_string: bool) -> str:
    """The key of a view's response for ``path`` and (if ``query_string``) ``query``."""
    pairs = sorted(query) if query_string else []
    text = repr((path, pairs))
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"view:{name}:{digest}"


def _frozen(response: Response, personal: bool) -> tuple[Any, ...] | Response:
    """A response as a plain tuple to store, or the response itself if it must not be stored.

    Never stored: a response of a view that read or wrote the session
    (``personal``: it may differ per user), one that sets a cookie, one that
    varies on a request header other than ``Accept-Encoding`` (the key does
    not), a streamed one, one marked ``Cache-Control: private`` or ``no-store``.
    """
    control = response.cache_control
    if (
        personal
        or response.is_streamed
        or response.direct_passthrough
        or "Set-Cookie" in response.headers
        or any(field.lower() not in HARMLESS_VARY for field in response.vary)
        or control.private
        or control.no_store
    ):
        return response
    return (
        RESPONSE_MARK,
        response.status_code,
        list(response.headers.items()),
        response.get_data(),
    )


def _thawed(value: Any) -> Any:
    """The response to return for a computed or stored view value."""
    if type(value) is tuple and len(value) == 4 and value[0] == RESPONSE_MARK:
        return Response(value[3], status=value[1], headers=value[2])
    return value


def _response_filter(
    should_cache: Callable[[Response], bool] | None,
) -> Callable[[Any], bool]:
    def keep(value: Any) -> bool:
        if not (type(value) is tuple and value and value[0] == RESPONSE_MARK):
            return False
        if should_cache is None:
            return value[1] in CACHEABLE_STATUSES
        return should_cache(_thawed(value))

    return keep


def cached(
    cache: CacheLike,
    timeout: Timeout = None,
    *,
    stale: Timeout = 0,
    beta: float = 1.0,
    tags: Tags = (),
    unless: Callable[[], bool] | None = None,
    should_cache: Callable[[Response], bool] | None = None,
    key: Callable[[], str] | None = None,
    name: str | None = None,
    fail_open: bool = True,
    query_string: bool = True,
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """Cache a view's response in ``cache``, with no stampede; sync or ``async def`` views.

    One response per path and (``query_string=True``) sorted query
    arguments, served to *everyone* who asks for them: use it on pages that
    are the same for every user. ``key()`` overrides the key (inside the
    request). Only ``GET`` and ``HEAD`` requests without an ``Authorization``
    header are served from the cache. By default only ``200`` responses are
    stored (``should_cache(response)`` decides otherwise), and never one of a
    view that read or wrote the session, one that sets a cookie or varies on
    a request header, a streamed one, or one marked ``private`` or
    ``no-store``. The other parameters are :func:`memoize`'s; a view's
    ``tags`` callable gets the view's arguments.
    """

    def decorate(fn: Callable[P, R]) -> Memoized[P, R]:
        named = _name_of(fn, name, key)
        policy = Policy.of(named, timeout, stale, beta, fail_open)
        tags_of = _tags_of(named, tags)
        keep = _response_filter(should_cache)

        def key_of(args: Any, kwargs: Any) -> str:
            if key is not None:
                return check_key(key())
            return view_key(named, request.path, request.args.items(multi=True), query_string)

        def key_of_path(path: str = "", query: Iterable[tuple[str, str]] = ()) -> str:
            if key is not None:
                return check_key(key())  # inside a request (test_request_context)
            return view_key(named, path, query, query_string)

        def bypass() -> bool:
            return (
                request.method not in ("GET", "HEAD")
                or "Authorization" in request.headers
                or (unless is not None and unless())
            )

        wrapper: Any
        if inspect.iscoroutinefunction(fn):
            coroutine = cast(Callable[..., Awaitable[Any]], fn)

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                strategy = computed.resolved(cache, policy)
                if strategy is None or bypass():
                    computed.count(strategy, policy, "bypassed")
                    return await coroutine(*args, **kwargs)

                async def compute() -> Any:
                    watch = watch_session()
                    try:
                        response = make_response(await coroutine(*args, **kwargs))
                    finally:
                        personal = watch.end()
                    return _frozen(response, personal)

                return _thawed(
                    await fetch_async(
                        strategy, key_of(args, kwargs), compute, policy,
                        tags_of(args, kwargs), keep,
                    )
                )  # fmt: skip

        else:

            def compute_view(args: Any, kwargs: Any) -> Any:
                watch = watch_session()
                try:
                    response = make_response(fn(*args, **kwargs))
                finally:
                    personal = watch.end()
                return _frozen(response, personal)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                strategy = computed.resolved(cache, policy)
                if strategy is None or bypass():
                    computed.count(strategy, policy, "bypassed")
                    return fn(*args, **kwargs)
                return _thawed(
                    fetch(
                        strategy,
                        key_of(args, kwargs),
                        lambda: compute_view(args, kwargs),
                        policy,
                        tags_of(args, kwargs),
                        keep,
                    )
                )

        _attach(wrapper, fn, cache, named, key_of_path)
        return cast(Memoized[P, R], wrapper)

    return decorate
