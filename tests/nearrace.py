"""The near cache's race: one process writes or invalidates while others read in a loop.

Used by ``tests/test_near.py`` (the verdict) and ``bench/on_near.py`` (the figures).

The writer owns two keys, read together the way the compute-once engine reads
them (``strategy.load_many([record, tag])``): a memo record whose value is the
round that wrote it, and its tag's generation (the round that invalidated it).
Each round it either writes a new record (``commit``) or invalidates the tag
(a new generation), noting on the shared monotonic clock when the write began
and returned; every ``kill_every`` rounds it first kills every tracking
connection (``CLIENT KILL TYPE pubsub``). Each reader process reads in a loop,
noting when each read began and what it got, and notes when its near cache
applied an invalidation of either key or emptied itself.

Verdict, per reader and read: a read that began after round ``i``'s write
returned *and* after this reader applied an invalidation (or emptied its near
cache) at or after that write's start must see round ``i``'s state or newer:
otherwise it is a **violation**. One that began after the write returned but
before that arrival and saw the old state is **in flight** (allowed: the
delivery delay). The delays reported are arrival minus write return.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

MARK = "cachekit.computed/1"


def _cache(url: str, prefix: str, near: bool) -> Any:
    import redis
    from cachelib import RedisCache

    import cachekit.settings
    from cachekit.resolve import create
    from cachekit.settings import NearCacheLimits

    backend = RedisCache(host=redis.Redis.from_url(url), key_prefix=prefix)
    settings = cachekit.settings.DEFAULTS
    if near:
        import dataclasses

        settings = dataclasses.replace(settings, near_cache=NearCacheLimits())
    strategy = create(backend, settings)
    return backend, strategy


def _record(version: int, generation: int) -> tuple[Any, ...]:
    return (MARK, version, 0.0, 0.0, (("t", generation),))


def _write(strategy: Any, key: str, value: Any) -> float:
    """Write ``value`` as the compute-once engine does (under the key's lease, one commit).

    Returns when the commit's reply came (before the lease's release).
    """
    with strategy.modifying((key,)):
        strategy.commit({key: (strategy.encode(key, value), 0)})
        return time.monotonic()


def _reader(url: str, prefix: str, start: Any, stop: Any, results: Any) -> None:
    _, strategy = _cache(url, prefix, near=True)
    near = strategy._near
    arrivals: list[tuple[float, str | None]] = []
    record_key, tag_key = strategy._key("r"), strategy._key("cachekit:tag:t")

    def observe(at: float, names: list[str] | None) -> None:
        if names is None:
            arrivals.append((at, None))
            return
        for name in names:
            if name in (record_key, tag_key):
                arrivals.append((at, name))

    near.observers.append(observe)
    keys = ["r", "cachekit:tag:t"]
    strategy.load_many(keys)
    reads: list[tuple[float, int, int]] = []
    start.wait()
    while not stop.is_set():
        began = time.monotonic()
        record, tag = strategy.load_many(keys)
        version = record.value[1] if record is not None else -1
        generation = tag.value if tag is not None else -1
        reads.append((began, version, generation))
    results.put((reads, arrivals, dict(near.figures)))


@dataclass
class Outcome:
    rounds: int
    reads: int
    hits: int
    violations: int
    in_flight: int
    delays_us: list[float]  # arrival minus write return, per reader and round
    kill_rounds: int
    first_violation: str


def run(url: str, rounds: int = 10_000, readers: int = 3, kill_every: int = 500) -> Outcome:
    """Run the race against the server at ``url``; see the module's docstring."""
    import redis

    prefix = f"race-{uuid.uuid4().hex[:8]}:"
    _, strategy = _cache(url, prefix, near=False)
    raw = redis.Redis.from_url(url)
    for key, value in (("r", _record(0, 0)), ("cachekit:tag:t", 0)):
        _write(strategy, key, value)
    ctx = mp.get_context("fork")
    start, stop, results = ctx.Barrier(readers + 1), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(url, prefix, start, stop, results))
        for _ in range(readers)
    ]
    for proc in procs:
        proc.start()
    start.wait(timeout=60)
    writes: list[tuple[int, float, float, str, int, int]] = []  # round, began, returned, key, v, g
    version = generation = 0
    kills = 0
    time.sleep(0.05)
    for number in range(1, rounds + 1):
        if kill_every and number % kill_every == 0:
            raw.client_kill_filter(_type="pubsub")
            kills += 1
        began = time.monotonic()
        if number % 2:
            version = number
            key = "r"
            returned = _write(strategy, key, _record(version, generation))
        else:
            generation = number
            key = "cachekit:tag:t"
            returned = _write(strategy, key, generation)
        writes.append((number, began, returned, strategy._key(key), version, generation))
        time.sleep(0.0002)  # let the readers read between writes
    time.sleep(0.05)
    stop.set()
    gathered = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    raw.close()
    return _judge(rounds, writes, gathered, kills)


def _judge(
    rounds: int,
    writes: list[tuple[int, float, float, str, int, int]],
    gathered: list[tuple[list[tuple[float, int, int]], list[tuple[float, str | None]], Any]],
    kills: int,
) -> Outcome:
    violations = in_flight = reads_total = hits = 0
    delays: list[float] = []
    first = ""
    for reads, arrivals, figures in gathered:
        reads_total += len(reads)
        hits += figures["hits"]
        # For each write, when this reader applied its invalidation (or emptied itself).
        arrived: list[float] = []
        position = 0
        for _, began, returned, key, _, _ in writes:
            while position < len(arrivals) and arrivals[position][0] < began:
                position += 1
            at = returned  # no arrival seen: judged as if it came with the reply
            for when, name in arrivals[position:]:
                if name is None or name == key:
                    at = when
                    break
            arrived.append(at)
            delays.append((at - returned) * 1e6)
        # Walk the reads in time order against the writes in order.
        index = -1  # the last write that returned before the read began
        for began, version, generation in reads:
            while index + 1 < len(writes) and writes[index + 1][2] <= began:
                index += 1
            if index < 0:
                continue
            # The newest state this read must see: the last write whose invalidation arrived.
            due = index
            while due >= 0 and arrived[due] > began:
                due -= 1
            _, _, _, _, want_version, want_generation = writes[index]
            if version < want_version or generation < want_generation:
                if due >= 0:
                    _, _, _, _, due_version, due_generation = writes[due]
                    if version < due_version or generation < due_generation:
                        violations += 1
                        if not first:
                            first = (
                                f"read at {began:.6f} saw v{version} g{generation}; round"
                                f" {writes[due][0]} (v{due_version} g{due_generation}) arrived"
                                f" at {arrived[due]:.6f}"
                            )
                        continue
                in_flight += 1
    return Outcome(rounds, reads_total, hits, violations, in_flight, delays, kills, first)


def describe(outcome: Outcome) -> str:
    """The outcome in a few lines, with the delay distribution."""
    delays = sorted(outcome.delays_us)

    def at(share: float) -> float:
        return delays[min(len(delays) - 1, int(share * len(delays)))]

    return (
        f"{outcome.rounds} rounds ({outcome.kill_rounds} with the tracking connections"
        f" killed), {outcome.reads} reads ({outcome.hits} near hits):"
        f" {outcome.violations} stale after the invalidation arrived,"
        f" {outcome.in_flight} stale while it was in flight.\n"
        f"invalidation delay after the write returned, us: min {delays[0]:.0f},"
        f" p50 {statistics.median(delays):.0f}, p90 {at(0.9):.0f}, p99 {at(0.99):.0f},"
        f" p99.9 {at(0.999):.0f}, max {delays[-1]:.0f}"
    )
