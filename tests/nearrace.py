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
returned *and* after this reader applied the invalidation that round ``i`` (or
a later write of the same key) caused, or emptied its near cache after round
``i``'s write returned, must see round ``i``'s state or newer: otherwise it is
a **violation**. One that began after the write returned but before that
arrival and saw the old state is **in flight** (allowed: the delivery delay).
The delays reported are arrival minus write return.

Which write an invalidation came from: the message names only the key, and an
invalidation of the same key applied after round ``i`` began may be an older
write's, applied late (the reader was not scheduled for a while): charging it
to round ``i`` made false violations (issue 24: the reader, having applied the
older invalidation, read the key again before round ``i`` ran, kept that value,
and served it, rightly, while round ``i``'s own invalidation was on its way).
So each reader notes what every read on its near cache's reading connection saw,
in the order the server ran them (one connection), and which tracking
connection each invalidation came on. In Redis's default tracking mode a key
read on a connection draws one invalidation, at the next write of that key,
and none after until it is read again: so the ``n``-th invalidation of a key on
a tracking connection was caused by the write that replaced the ``n``-th
distinct value its reading connection saw of that key, and each value names the
round that wrote it. An invalidation that cannot be placed so (a read failed,
or the count disagrees with the times) is not charged to any write
(``unattributed``).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

MARK = "cachekit.computed/1"

Write = tuple[int, float, float, str, int, int]  # round, began, returned, key, version, generation
Seen = tuple[bytes, int | None, int | None]  # tracking connection's name, version, generation


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
    # (when applied, key or None when the near cache emptied itself, tracking connection's name)
    arrivals: list[tuple[float, str | None, bytes | None]] = []
    # What each read of both keys on the reading connection got, in the server's order:
    # (its tracking connection's name, record's raw, tag's raw); raws None: the read failed.
    seen: list[tuple[bytes, bytes | None, bytes | None]] = []
    record_key, tag_key = strategy._key("r"), strategy._key("cachekit:tag:t")

    def observe(at: float, names: list[str] | None) -> None:
        if names is None:
            arrivals.append((at, None, None))
            return
        tracking = near._tracking  # (called under the lock, for a message on this connection)
        epoch = tracking.name if tracking is not None else None
        for name in names:
            if name in (record_key, tag_key):
                arrivals.append((at, name, epoch))

    read = near._read

    def noted_read(tracking: Any, full: list[str]) -> Any:
        if full != [record_key, tag_key]:
            return read(tracking, full)
        try:
            raws = read(tracking, full)
        except BaseException:
            seen.append((tracking.name, None, None))  # the server may have run it: unknown
            raise
        if raws is not None:  # (None: it did not run on the tracked connection)
            seen.append((tracking.name, raws[0], raws[1]))
        return raws

    near.observers.append(observe)
    near._read = noted_read
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
    values = [
        (
            epoch,
            None if raw_record is None else near._decode("r", raw_record)[1],
            None if raw_tag is None else near._decode("cachekit:tag:t", raw_tag),
        )
        for epoch, raw_record, raw_tag in seen
    ]
    results.put((reads, arrivals, dict(near.figures), values, (record_key, tag_key)))


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
    unattributed: int = 0  # invalidations applied that could not be placed (see the docstring)


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
    writes: list[Write] = []
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


def _arrivals(
    writes: list[Write],
    arrivals: list[tuple[float, str | None, bytes | None]],
    seen: list[Seen],
    keys: tuple[str, str],
) -> tuple[list[float], int]:
    """For each write, when this reader applied an invalidation it (or a later write of its key)
    caused, or emptied its near cache after it returned; and how many invalidations could not
    be placed. See the module's docstring."""
    import bisect

    record_key, tag_key = keys
    # The distinct values each tracking connection's reader saw of each key, in order;
    # None: from here on unknown (a read failed, or an invalidation could not be placed).
    runs: dict[tuple[bytes, str], list[int | None]] = {}
    for epoch, version, generation in seen:
        for key, value in ((record_key, version), (tag_key, generation)):
            values = runs.setdefault((epoch, key), [])
            if values and values[-1] is None:
                continue
            if value is None or value < 0 or not values or values[-1] != value:
                values.append(value if value is not None and value >= 0 else None)
    # The writes of each key, by round: the value x of a key was written by round x (0: the
    # setup), so the write that replaced it is the first write of that key after round x.
    rounds: dict[str, list[int]] = {}
    places: dict[str, list[int]] = {}
    for index, (number, _, _, key, _, _) in enumerate(writes):
        rounds.setdefault(key, []).append(number)
        places.setdefault(key, []).append(index)
    caused = [float("inf")] * len(writes)  # when the invalidation that write caused was applied
    counts: dict[tuple[bytes, str], int] = {}
    resets: list[float] = []
    unattributed = 0
    for when, name, came_on in arrivals:
        if name is None or came_on is None:
            if name is None:
                resets.append(when)
            else:
                unattributed += 1
            continue
        n = counts.get((came_on, name), 0)
        counts[(came_on, name)] = n + 1
        values = runs.get((came_on, name), [])
        value = values[n] if n < len(values) else None
        if value is None:
            unattributed += 1
            continue
        position = bisect.bisect_right(rounds.get(name, []), value)
        if position == len(rounds.get(name, [])):
            unattributed += 1  # no write replaced that value: the count is off
            continue
        index = places[name][position]
        if writes[index][1] > when:  # applied before its cause began: the count is off
            values[n:] = [None]
            unattributed += 1
            continue
        caused[index] = min(caused[index], when)
    # A write whose invalidation could not be placed is judged as before (the strictest
    # that can be said): by the first invalidation of its key applied after it began.
    keyed = sorted((when, name) for when, name, came_on in arrivals if name is not None)
    for index, (_, began, _, key, _, _) in enumerate(writes):
        if caused[index] == float("inf"):
            at = bisect.bisect_left(keyed, (began, ""))
            while at < len(keyed) and keyed[at][1] != key:
                at += 1
            if at < len(keyed):
                caused[index] = keyed[at][0]
    arrived = [0.0] * len(writes)
    later: dict[str, float] = {}
    for index in range(len(writes) - 1, -1, -1):
        _, _, returned, key, _, _ = writes[index]
        soonest = later[key] = min(later.get(key, float("inf")), caused[index])
        position = bisect.bisect_left(resets, returned)
        if position < len(resets):
            soonest = min(soonest, resets[position])
        arrived[index] = soonest if soonest != float("inf") else returned  # none: with the reply
    return arrived, unattributed


def _judge(
    rounds: int,
    writes: list[Write],
    gathered: list[
        tuple[
            list[tuple[float, int, int]],
            list[tuple[float, str | None, bytes | None]],
            Any,
            list[Seen],
            tuple[str, str],
        ]
    ],
    kills: int,
) -> Outcome:
    violations = in_flight = reads_total = hits = unattributed = 0
    delays: list[float] = []
    first = ""
    for reads, arrivals, figures, seen, keys in gathered:
        reads_total += len(reads)
        hits += figures["hits"]
        # For each write, when this reader applied its invalidation (or emptied itself).
        arrived, missed = _arrivals(writes, arrivals, seen, keys)
        unattributed += missed
        for at, (_, _, returned, _, _, _) in zip(arrived, writes, strict=True):
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
    return Outcome(
        rounds, reads_total, hits, violations, in_flight, delays, kills, first, unattributed
    )


def describe(outcome: Outcome) -> str:
    """The outcome in a few lines, with the delay distribution."""
    delays = sorted(outcome.delays_us)

    def at(share: float) -> float:
        return delays[min(len(delays) - 1, int(share * len(delays)))]

    return (
        f"{outcome.rounds} rounds ({outcome.kill_rounds} with the tracking connections"
        f" killed), {outcome.reads} reads ({outcome.hits} near hits):"
        f" {outcome.violations} stale after the invalidation arrived,"
        f" {outcome.in_flight} stale while it was in flight"
        f" ({outcome.unattributed} invalidations not placed).\n"
        f"invalidation delay after the write returned, us: min {delays[0]:.0f},"
        f" p50 {statistics.median(delays):.0f}, p90 {at(0.9):.0f}, p99 {at(0.99):.0f},"
        f" p99.9 {at(0.999):.0f}, max {delays[-1]:.0f}"
    )
