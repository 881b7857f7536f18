"""The near cache: each process's own copy of the memo records and tag generations it read.

With ``CACHEKIT_NEAR_CACHE`` set, a RedisCache (or Sentinel) strategy serves
the compute-once engine's reads (:func:`cachekit.computed._lookup`: a memo
record and its tags' generations) from a dict in the process when it can, and
from Redis otherwise. The server says what changed: Redis's client-side caching
(``CLIENT TRACKING``, default mode, RESP2, Redis 6.2+ and Valkey).

How it stays correct:

- **One tracking connection and one reading connection per process** (per
  strategy). The tracking connection is subscribed to ``__redis__:invalidate``
  under a unique client name. The reading connection, opened with it, turns
  tracking on (``CLIENT TRACKING ON REDIRECT <tracking id>``) and proves, in
  the same round trip, that the tracking connection is on the very server it
  reads (``CLIENT LIST ID``: a failover or a restart can reuse client ids).
  Every read that fills the near cache goes on that connection, so every key
  the near cache holds was read with tracking on, and a later write of it by
  anyone sends an invalidation to this process.
- **The reading connection must stay open.** Redis forgets what a
  connection read when that connection closes: a write after that sends no
  invalidation at all (found by ``test_near_faults``: a ``CLIENT KILL`` of it,
  or the server's idle ``timeout``, left a replaced value served for good). So
  each fill checks, in its round trip, that the connection is still the one
  that turned tracking on (its unique name: redis-py reconnects a closed
  connection silently), the heartbeat checks it every ``max_silence / 4``
  seconds (which also keeps it from idling out), and any failure or mismatch
  empties the near cache. Hits are served only while both connections were
  seen alive recently (below).
- **Pending invalidations are applied before every hit.** A hit first asks
  the tracking socket whether anything is waiting (``poll`` without waiting,
  about a microsecond) and, if so or if another thread is applying some,
  applies them under the lock before looking up. So a hit never serves an
  entry whose invalidation this process has received.
- **A fill never stores what was invalidated meanwhile.** A fill notes the
  invalidation sequence number before its read and, after it, applies what is
  pending and stores only if no invalidation of its keys, flush or reset came
  in between (a ring of the recent invalidated keys tells; past its length, the
  fill stores nothing).
- **Losing the tracking connection empties the near cache at once**, under
  the lock: the server closing it (``CLIENT KILL``, a restart, a Sentinel
  failover), any error on it, an unexpected message, a lost heartbeat. Entries
  are only ever stored under the tracking connection current when their read
  began (its identity is checked again at the store), so nothing read before a
  reconnect is served after it. Until a new connection is made (at most one
  try a second), reads go to Redis.
- **Heartbeat.** A partition that drops the tracking connection's traffic
  without closing it is invisible to the socket. So the tracking connection
  carries a numbered ``PING`` every ``max_silence / 4`` seconds, and hits are
  served only until ``max_silence`` after the earlier of two times: the
  sending of the last ping that was answered, and the last check that the
  reading connection was open. Every write that completed before both had
  its invalidation sent (its reader was open) and delivered (one connection
  keeps its order). A ping not
  answered within ``max_silence``, or answered out of order, resets. So a
  silent partition leaves a replaced value served for at most ``max_silence``
  (0.25 s by default); on a healthy connection the bound is the
  invalidation's delivery (tens to hundreds of microseconds on loopback).
- **Own writes are seen at once**: :meth:`NearCache.discard` drops the keys
  a commit of this process wrote as soon as it returned.
- **Fork**: a child starts empty, without a tracking connection
  (:mod:`cachekit.forking`); it opens its own at its first read.
- **Memory**: at most ``max_entries`` entries and ``max_bytes`` bytes (each
  entry counted as its key, its stored form and :data:`OVERHEAD`), least
  recently used out first. An entry counts as the memory of its key, stored form
  and decoded value (``sys.getsizeof`` over what it holds) plus :data:`OVERHEAD`.

Values: an entry whose value is immutable (numbers, strings, bytes, tuples of
those: a record of such a value) is served as the same object; any other is
decoded again from its stored form on every hit, so a caller that mutates what
it got cannot change what the next caller gets.

Threads and gevent: the state is guarded by one lock; a hit takes it only when
the tracking socket has something to read, a heartbeat is due, or another
thread holds it. The heartbeat runs on a daemon thread (a greenlet under
gevent) that lives as long as the near cache, and hits also send one when due.

Redis Cluster is not supported (one tracking connection per node is not built):
the strategy refuses ``CACHEKIT_NEAR_CACHE`` there instead of serving stale values.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Final

from .. import forking
from ..computed import TAG_PREFIX, is_record
from ..settings import NearCacheLimits
from ..strategy import Entry
from ..threadlocks import PerProcessValue
from .translate import CLIENT_ERRORS

log = logging.getLogger(__name__)

#: The channel the server publishes invalidations on, for a RESP2 redirect target.
CHANNEL: Final = b"__redis__:invalidate"
#: Bytes counted per entry beyond its key, stored form and value: the dict's slot and
#: order links, the Entry and the slot tuple (measured on CPython 3.13, 64-bit).
OVERHEAD: Final = 260
#: How many recent invalidated keys a fill can check its keys against.
RECENT: Final = 4096
#: Seconds between two tries to open the tracking connection after one failed.
RETRY: Final = 1.0
#: Seconds at least between a lost tracking connection and the next one (no reconnect storm).
RECONNECT: Final = 0.05
#: The stored expiry of an entry read from Redis (the strategy's KEEP).
KEEP: Final = -1

#: What a tracking connection can fail with: the client's errors, the socket's, a bad reply.
_FAILURES: Final[tuple[type[BaseException], ...]] = (*CLIENT_ERRORS, OSError, ValueError)

Decode = Callable[[str, bytes], Any]
Observer = Callable[[float, "list[str] | None"], None]

_ATOMS: Final = frozenset({int, float, str, bytes, bool, complex, type(None)})


def _immutable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` cannot be changed by whoever gets it (atoms and tuples of them)."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind is tuple and depth < 8:
        return all(_immutable(item, depth + 1) for item in value)
    return False


def _footprint(value: Any, budget: int = 1000) -> int:
    """The memory of ``value`` and what it holds, looked at for ``budget`` objects at most.

    Containers (tuples, lists, sets, dicts) are followed; past the budget the
    rest is counted as 64 bytes an object. Objects shared with others (small
    ints, interned strings) are counted in full: an overestimate.
    """
    import sys

    total, stack, seen = 0, [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return total + 64 * (len(stack) + 1)
        total += sys.getsizeof(item)
        kind = type(item)
        if kind in (tuple, list, set, frozenset):
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
    return total


def _kept(key: str, entry: Entry) -> bool:
    """Whether the near cache keeps ``entry``: memo records and tag generations only."""
    return key.startswith(TAG_PREFIX) or is_record(entry.value)


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


class _ErrorReply(bytes):
    """An error reply (``-ERR ...``)."""


def _parse(buffer: bytearray, start: int) -> tuple[Any, int]:
    """The RESP reply at ``start`` of ``buffer`` and where it ends; _Incomplete if it does not.

    Arrays (and RESP3 pushes), bulk and simple strings, integers, errors and
    nulls: all a subscribed connection gets. Anything else raises ValueError.
    """
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    kind, line, at = buffer[start], bytes(buffer[start + 1 : end]), end + 2
    if kind == 0x24:  # $ bulk string
        length = int(line)
        if length < 0:
            return None, at
        if len(buffer) < at + length + 2:
            raise _Incomplete
        return bytes(buffer[at : at + length]), at + length + 2
    if kind in (0x2A, 0x3E):  # * array, > push
        count = int(line)
        if count < 0:
            return None, at
        items = []
        for _ in range(count):
            item, at = _parse(buffer, at)
            items.append(item)
        return items, at
    if kind == 0x3A:  # : integer
        return int(line), at
    if kind == 0x2B:  # + simple string
        return line, at
    if kind == 0x2D:  # - error
        return _ErrorReply(line), at
    if kind == 0x5F:  # _ RESP3 null
        return None, at
    raise ValueError(f"unexpected RESP type {chr(kind)!r}")


class _Tracking:
    """One tracking connection as installed: compared by identity to tell epochs apart.

    Its socket is read here, not by redis-py: redis-py and hiredis reshape or
    hand pub/sub messages to push handlers that differ by version (hiredis 3.2
    turns RESP2 invalidations into pushes that redis-py drops without a
    handler), and a dropped invalidation is a stale value served.
    """

    __slots__ = (
        "buffer",
        "connection",
        "dropped",
        "fileno",
        "id",
        "name",
        "read_lock",
        "reader",
        "reader_name",
        "sock",
    )

    def __init__(
        self, connection: Any, sock: Any, client_id: int, name: bytes, reader: Any
    ) -> None:
        self.connection = connection
        self.sock = sock
        self.fileno = int(sock.fileno())
        self.id = client_id
        self.name = name
        self.buffer = bytearray()
        #: The reading connection (the near cache's alone, never in a pool) and its name.
        self.reader = reader
        self.reader_name = name + b"-r"
        #: Held while the reading connection is used (made in the process that uses it).
        self.read_lock = threading.Lock()
        self.dropped = False

    def send(self, *args: bytes) -> None:
        """Send one command (a few bytes: sent whole at once, or the connection fails)."""
        packed = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args
        )
        self.sock.sendall(packed)

    def pending(self) -> bool:
        """Whether decrypted bytes wait inside a TLS socket (not seen by poll)."""
        waiting = getattr(self.sock, "pending", None)
        return bool(waiting()) if waiting is not None else False

    def receive(self) -> list[Any]:
        """Read what the socket has (it is readable) and return every whole reply in the buffer.

        Raises ConnectionError when the server closed the connection.
        """
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the tracking connection")
        buffer = self.buffer
        buffer += data
        replies, at = [], 0
        while at < len(buffer):
            try:
                reply, at = _parse(buffer, at)
            except _Incomplete:
                break
            replies.append(reply)
        del buffer[:at]
        return replies


class NearCache:
    """One strategy's near cache in one process (see the module's docstring for the invariants).

    ``client`` is a client of the near cache's own (plain connections, bounded
    waits) to the server the strategy writes to; ``key_of`` gives a key's full
    Redis key, ``decode`` a stored form's value, ``load_many`` the strategy's
    own read (used while there is no tracking connection).
    """

    def __init__(
        self,
        client: Any,
        limits: NearCacheLimits,
        key_of: Callable[[str], str],
        decode: Decode,
        load_many: Callable[[list[str]], list[Entry | None]],
    ) -> None:
        self._client = client
        self.limits = limits
        self._key_of = key_of
        self._decode = decode
        self._plain_load_many = load_many
        self._interval = limits.max_silence / 4
        #: Called under the lock with (monotonic time, keys) at each invalidation applied
        #: (keys None: everything, a flush or a lost connection). For tests and metrics.
        self.observers: list[Observer] = []
        self.figures: dict[str, int] = {}
        self._closed = False
        self._fresh_state()
        _every.add(self)

    @property
    def _lock(self) -> threading.Lock:
        """Guards the entries and the tracking connection's state."""
        return self._locks.get()[0]

    @property
    def _connect_lock(self) -> threading.Lock:
        """Held by the one (re)connection under way, only ever tried."""
        return self._locks.get()[1]

    def _fresh_state(self) -> None:
        """Empty, unconnected: at creation and in a forked child (plain assignments only)."""
        self._pid = os.getpid()
        # Made at first use in each process, after gevent (if any) patched ``threading``:
        # a real lock made at the fork of a --preload master would block a gevent worker's
        # whole hub while one greenlet held it across the network.
        self._locks = PerProcessValue(lambda: (threading.Lock(), threading.Lock()))
        self._entries: OrderedDict[str, tuple[Entry, int, bool]] = OrderedDict()
        self._bytes = 0
        self._tracking: _Tracking | None = None
        self._fileno: int | None = None
        self._seq = 0
        self._flushed_at = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=RECENT)
        self._pings: deque[tuple[int, float]] = deque()
        self._ping_number = 0
        self._ping_due = 0.0
        self._valid_until = 0.0
        self._reader_seen = 0.0  # when the reading connection was last seen open (sent time)
        self._retry_at = 0.0
        self._polls = threading.local()
        self._beating = False
        self._connecting = False
        self.figures = dict.fromkeys(
            ("hits", "fills", "stored", "refused", "invalidated", "flushes", "resets"), 0
        )

    # -- reading ---------------------------------------------------------------------

    def load_many(self, keys: list[str]) -> list[Entry | None]:
        """The entries of ``keys``: from this process's memory if all are there, else Redis."""
        full = [self._key_of(key) for key in keys]
        if self._ready():
            entries = self._entries
            slots = []
            for name in full:
                slot = entries.get(name)
                if slot is None:
                    break
                slots.append(slot)
            else:
                for name in full:
                    try:
                        entries.move_to_end(name)
                    except KeyError:  # invalidated meanwhile by another thread: served anyway
                        pass
                self.figures["hits"] += 1
                return [
                    slot[0] if slot[2] else Entry(self._decode(key, slot[0].raw), KEEP, slot[0].raw)
                    for key, slot in zip(keys, slots, strict=True)
                ]
        return self._fill(keys, full)

    def _ready(self) -> bool:
        """Whether a hit may be served now: pending invalidations applied, heartbeat fresh."""
        fileno = self._fileno
        if fileno is None:
            return False
        now = time.monotonic()
        if now >= self._ping_due or self._readable(fileno) or self._lock.locked():
            with self._lock:
                self._tend(now)
        return self._fileno is not None and time.monotonic() < self._valid_until

    def _readable(self, fileno: int) -> bool:
        """Whether the tracking socket has bytes (or its close) waiting; never waits."""
        local = self._polls
        if getattr(local, "fileno", None) != fileno:
            local.poller = None
            if hasattr(select, "poll"):
                local.poller = select.poll()
                local.poller.register(fileno, select.POLLIN | select.POLLERR | select.POLLHUP)
            local.fileno = fileno
        poller = local.poller
        if poller is None:
            return bool(select.select([fileno], [], [], 0)[0])
        return bool(poller.poll(0))

    def _fill(self, keys: list[str], full: list[str]) -> list[Entry | None]:
        """Read ``keys`` from Redis on the reading connection; store what may be kept.

        If that connection fails, or is no longer the one that turned tracking
        on, the near cache is emptied and the strategy's own read answers.
        """
        tracking = self._tracking
        if tracking is None:
            self._connect_soon()
            return self._plain_load_many(keys)
        seq = self._seq
        self.figures["fills"] += 1
        began = time.monotonic()
        try:
            raws = self._read(tracking, full)
        except Exception as error:
            if not (isinstance(error, _FAILURES) or tracking.dropped):
                raise  # (a reset closes the connection under a read: whatever that raises)
            raws, why = None, f"the reading connection failed: {error}"
        except BaseException:  # a gevent Timeout, a KeyboardInterrupt: the reader was closed
            with self._lock:
                if self._tracking is tracking:
                    self._reset("a read was interrupted (the reading connection was closed)")
            raise
        else:
            why = "the reading connection was closed and opened again (tracking lost)"
        if raws is None:
            with self._lock:
                if self._tracking is tracking:
                    self._reset(why)
            return self._plain_load_many(keys)
        entries = [
            None if raw is None else Entry(self._decode(key, raw), KEEP, raw)
            for key, raw in zip(keys, raws, strict=True)
        ]
        with self._lock:
            self._tend(time.monotonic())
            if self._tracking is tracking:
                self._reader_seen = max(self._reader_seen, began)
            if self._tracking is tracking and not self._invalidated_since(seq, full):
                for key, name, entry in zip(keys, full, entries, strict=True):
                    if entry is not None and _kept(key, entry):
                        self._store(name, entry)
            else:
                self.figures["refused"] += 1
        return entries

    def _read(self, tracking: _Tracking, full: list[str]) -> list[Any] | None:
        """``MGET`` of ``full`` (nothing if empty) on the reading connection, in one round trip
        with ``CLIENT GETNAME``; None if the connection is not the one that turned tracking on
        (dropped, or closed and silently opened again by redis-py). Raises what the
        connection raised (the connection then closed)."""
        from ..compat import read_reply, send_commands

        reader = tracking.reader
        commands: list[tuple[Any, ...]] = [("CLIENT", "GETNAME")]
        if full:
            commands.append(("MGET", *full))
        with tracking.read_lock:
            if tracking.dropped:
                return None
            try:
                send_commands(reader, commands)
                name = read_reply(reader)
                raws = read_reply(reader) if full else []
            except BaseException:
                reader.disconnect()  # replies may be left unread
                raise
            if bytes(name or b"") != tracking.reader_name:
                reader.disconnect()
                return None
        return list(raws)

    def _check_reader(self) -> None:
        """(The heartbeat's.) Check that the reading connection is open and still the one that
        turned tracking on; note when (its sent time), or empty the near cache."""
        tracking = self._tracking
        if tracking is None:
            return
        began = time.monotonic()
        try:
            open_still = self._read(tracking, []) is not None
            why = "the reading connection was closed (tracking lost)"
        except Exception as error:  # (the heartbeat never raises)
            open_still, why = False, f"the reading connection failed: {error}"
        with self._lock:
            if self._tracking is not tracking:
                return
            if open_still:
                self._reader_seen = max(self._reader_seen, began)
            else:
                self._reset(why)

    def _invalidated_since(self, seq: int, full: list[str]) -> bool:
        """Whether any of ``full`` may have been invalidated since sequence number ``seq``."""
        if self._seq == seq:
            return False
        if self._flushed_at > seq:
            return True
        recent = self._recent
        if not recent or recent[0][0] > seq + 1:
            return True  # some invalidations since then are no longer in the ring
        wanted = set(full)
        for number, name in reversed(recent):
            if number <= seq:
                break
            if name in wanted:
                return True
        return False

    def _store(self, name: str, entry: Entry) -> None:
        """Keep ``entry`` under ``name`` (lock held), evicting the least recently used."""
        size = len(name) + 49 + len(entry.raw) + 33 + _footprint(entry.value) + OVERHEAD
        limits = self.limits
        if size > limits.max_bytes:
            return
        entries = self._entries
        old = entries.pop(name, None)
        if old is not None:
            self._bytes -= old[1]
        entries[name] = (entry, size, _immutable(entry.value))
        self._bytes += size
        self.figures["stored"] += 1
        while len(entries) > limits.max_entries or self._bytes > limits.max_bytes:
            _, (_, evicted, _) = entries.popitem(last=False)
            self._bytes -= evicted

    def discard(self, keys: list[str]) -> None:
        """Drop ``keys`` (this process just wrote them); fills in flight will not store them."""
        if self._tracking is None and not self._entries:
            return
        with self._lock:
            for key in keys:
                self._invalidate(self._key_of(key))

    # -- the tracking connection -----------------------------------------------------

    def _tend(self, now: float) -> None:
        """Apply what the tracking connection brought, heartbeat, reset if lost (lock held)."""
        tracking = self._tracking
        if tracking is None:
            return
        try:
            while tracking.pending() or self._readable(tracking.fileno):
                for reply in tracking.receive():
                    self._apply(reply)
                    if self._tracking is not tracking:
                        return
            now = time.monotonic()
            pings = self._pings
            if pings and now - pings[0][1] > self.limits.max_silence:
                self._reset(f"no answer to a heartbeat within {self.limits.max_silence} s")
            elif not pings and now >= self._ping_due:
                self._ping(tracking, now)
        except _FAILURES as error:
            self._reset(f"the tracking connection failed: {error}")

    def _ping(self, tracking: _Tracking, now: float) -> None:
        self._ping_number += 1
        tracking.send(b"PING", b"%d" % self._ping_number)
        self._pings.append((self._ping_number, now))
        self._ping_due = now + self._interval

    def _apply(self, reply: Any) -> None:
        """One message of the tracking connection (lock held)."""
        kind = reply[0] if isinstance(reply, list) and reply else None
        if (kind == b"message" and len(reply) == 3 and reply[1] == CHANNEL) or (
            kind == b"invalidate" and len(reply) == 2
        ):  # RESP2: a message on the channel; RESP3 (redis-py 8's default): a push
            names = reply[-1]
            arrived = time.monotonic()
            if names is None:  # FLUSHALL, FLUSHDB, or the server's tracking table reset
                self._clear()
                self.figures["flushes"] += 1
                self._tell(arrived, None)
                return
            decoded = [name.decode("utf-8", "surrogateescape") for name in names]
            for name in decoded:
                self._invalidate(name)
            self.figures["invalidated"] += len(decoded)
            self._tell(arrived, decoded)
        elif (kind == b"pong" and len(reply) == 2) or (
            type(reply) is bytes and reply.isdigit()
        ):  # [b"pong", b"<n>"] in RESP2, b"<n>" in RESP3
            number = int(reply if type(reply) is bytes else reply[1] or 0)
            pings = self._pings
            if not pings or pings[0][0] != number:  # one was lost on the way, and what else?
                self._reset("a heartbeat's answer is missing or out of order")
                return
            _, sent = pings.popleft()
            since = min(sent, self._reader_seen)  # every write before this was invalidated
            self._valid_until = max(self._valid_until, since + self.limits.max_silence)
        elif kind == b"subscribe":
            pass
        else:
            self._reset(f"an unexpected message on the tracking connection: {reply!r:.80}")

    def _invalidate(self, name: str) -> None:
        slot = self._entries.pop(name, None)
        if slot is not None:
            self._bytes -= slot[1]
        self._seq += 1
        self._recent.append((self._seq, name))

    def _clear(self) -> None:
        """Forget every entry (lock held); fills in flight store nothing."""
        self._entries.clear()
        self._bytes = 0
        self._seq += 1
        self._flushed_at = self._seq

    def _tell(self, arrived: float, names: list[str] | None) -> None:
        for observer in self.observers:
            try:
                observer(arrived, names)
            except Exception:
                log.exception("a near cache observer failed")

    def _reset(self, why: str) -> None:
        """Empty the near cache and drop the tracking connection (lock held)."""
        tracking, self._tracking, self._fileno = self._tracking, None, None
        self._valid_until = 0.0
        self._pings.clear()
        self._clear()
        self.figures["resets"] += 1
        self._retry_at = max(self._retry_at, time.monotonic() + RECONNECT)
        self._tell(time.monotonic(), None)
        if tracking is not None:
            log.info("cachekit near cache emptied: %s", why)
            self._drop(tracking)

    def _drop(self, tracking: _Tracking) -> None:
        from ..compat import give_back

        tracking.dropped = True  # a fill under way finds it so, or fails on the closed socket
        try:
            tracking.reader.disconnect()
        except Exception:
            log.debug("could not close the reading connection", exc_info=True)
        try:
            tracking.connection.disconnect()  # subscribed: never reused as it is
            give_back(self._client, tracking.connection)
        except Exception:
            log.debug("could not close the tracking connection", exc_info=True)

    def _connect_soon(self) -> None:
        """Open a tracking connection on a thread of its own (the caller reads Redis meanwhile).

        So a tracking connection that cannot be opened (a partition swallows its
        answers) costs no caller a wait.
        """
        if self._closed or self._connecting or time.monotonic() < self._retry_at:
            return
        self._connecting = True
        try:
            threading.Thread(
                target=self._connect, name="cachekit near cache connect", daemon=True
            ).start()
        except Exception:
            self._connecting = False
            log.warning("cachekit near cache: could not start connecting", exc_info=True)

    def _connect(self) -> None:
        """Open and install a tracking connection, if none is and a try is due; never raises."""
        if not self._connect_lock.acquire(blocking=False):
            self._connecting = False
            return
        try:
            if self._closed or time.monotonic() < self._retry_at:
                return
            if self._tracking is not None:
                return
            from ..compat import (
                connection_socket,
                give_back,
                own_connection,
                read_reply,
                send_commands,
                take_connection,
            )

            name = f"cachekit-near-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                connection = take_connection(self._client)
            except CLIENT_ERRORS as error:
                self._retry_at = time.monotonic() + RETRY
                log.warning("cachekit near cache: no tracking connection: %s", error)
                return
            reader = own_connection(self._client)
            try:
                send_commands(connection, [("CLIENT", "SETNAME", name), ("CLIENT", "ID")])
                read_reply(connection)
                client_id = int(read_reply(connection))
                sock = connection_socket(connection)
                if sock is None:
                    raise ConnectionError("the tracking connection closed at once")
                # From here on the socket is read here alone (redis-py has nothing buffered:
                # nothing is sent to a connection unasked before it subscribes).
                tracking = _Tracking(connection, sock, client_id, name.encode(), reader)
                tracking.send(b"SUBSCRIBE", CHANNEL)
                replies: list[Any] = []
                while not replies:
                    replies = tracking.receive()  # (blocks at most the socket's timeout)
                if replies[0] != [b"subscribe", CHANNEL, 1] or len(replies) > 1:
                    raise ValueError(f"unexpected answer to SUBSCRIBE: {replies!r:.80}")
                seen = time.monotonic()
                send_commands(
                    reader,
                    [
                        ("CLIENT", "SETNAME", tracking.reader_name),
                        ("CLIENT", "TRACKING", "ON", "REDIRECT", client_id),
                        ("CLIENT", "LIST", "ID", client_id),
                    ],
                )
                read_reply(reader)
                read_reply(reader)  # an error if no such client is on the server it reads
                listed = bytes(read_reply(reader) or b"")
                if b" name=" + tracking.name + b" " not in listed:
                    raise ValueError("the tracking connection is not on the server that is read")
            except _FAILURES as error:
                self._retry_at = time.monotonic() + RETRY
                log.warning("cachekit near cache: no tracking connection: %s", error)
                connection.disconnect()
                give_back(self._client, connection)
                reader.disconnect()
                return
            with self._lock:
                now = time.monotonic()
                self._clear()
                self._pings.clear()
                self._tracking, self._fileno = tracking, tracking.fileno
                self._reader_seen = seen
                self._valid_until = seen + self.limits.max_silence
                self._ping(tracking, now)
            self._start_heartbeat()
        finally:
            self._connecting = False
            self._connect_lock.release()

    def _start_heartbeat(self) -> None:
        if self._beating:
            return
        self._beating = True
        thread = threading.Thread(
            target=_heartbeat, args=(weakref.ref(self),), name="cachekit near cache", daemon=True
        )
        thread.start()

    def close(self) -> None:
        """Drop the tracking connection and every entry; reads go to Redis from now on."""
        self._closed = True
        with self._lock:
            self._reset("closed")

    def _after_fork_in_child(self) -> None:
        self._fresh_state()  # the parent's connection and thread are the parent's

    def size(self) -> tuple[int, int]:
        """How many entries and counted bytes the near cache holds now."""
        return len(self._entries), self._bytes


def _heartbeat(ref: weakref.ref[NearCache]) -> None:
    """Check the reading connection and tend the near cache (a ping on the tracking
    connection) every ``max_silence / 4`` s while it lives (an idle process too)."""
    pid = os.getpid()
    while True:
        near = ref()
        if near is None or near._closed or near._pid != pid:
            return
        interval = near._interval
        if near._tracking is not None:
            near._check_reader()
            with near._lock:
                near._tend(time.monotonic())
        del near
        time.sleep(interval)


_every: weakref.WeakSet[NearCache] = weakref.WeakSet()


def _forked() -> None:
    for near in list(_every):
        near._after_fork_in_child()


forking.at_fork(after_in_child=_forked)
