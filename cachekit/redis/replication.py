"""Writes that replicas confirm: a write and ``WAIT`` on one connection.

Redis replicates asynchronously, and a master that Sentinel has replaced
stays a writable master until Sentinel turns it into a replica (seconds: it
waits to see the old master report its role again). A write acknowledged by
a master can therefore be lost: the master dies before its replicas have it,
or it was already replaced and the new master never hears of it. A lease
granted there would not exclude anyone.

``WAIT n timeout`` answers how many replicas have every write the connection
made so far. So each write that must be confirmed is sent with ``WAIT``
behind it in one non-transactional pipeline, on one connection
(:meth:`Replication.run`), and counts only if at least ``n`` replicas
acknowledged it. The invariants its callers keep:

- a write that ``n`` replicas acknowledged is on the replica Sentinel
  promotes (it picks the one furthest along the master's stream), so a
  failover does not lose it;
- a write fewer acknowledged did not count: a lease grant is given back and
  tried again, a renewal refreshes nothing, a release tells the holder its
  lease may have been lost, any other write raises
  :class:`~cachekit.errors.StorageError` ("may or may not be kept");
- after such a write the client's idle connections are closed
  (:meth:`Replication.reconnect`), so that the next one asks the sentinels
  again instead of staying on a master that was replaced.

Whether a deployment is replicated is decided once, when the strategy is made
(:func:`replica_count`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from ..compat import cluster_node_client, is_cluster_client, sentinel_service
from ..errors import StorageError
from .translate import CLIENT_ERRORS, CLUSTER_ERRORS

log = logging.getLogger(__name__)

#: Longest wait, in seconds, for replicas to confirm one write (at most half the reply timeout).
REPLICA_WAIT: Final = 1.0
#: Tries of a write whose slot moved (MOVED, ASK) or whose node lacked the script (NOSCRIPT)
#: before the error is raised.
REDIRECTS: Final = 3

_ODD: tuple[type[Exception], ...] = (KeyError, ValueError, TypeError)  # an odd answer
_UNTOLD: Final = CLIENT_ERRORS + CLUSTER_ERRORS + _ODD


def replica_count(client: Any) -> int:
    """How many replicas the deployment has, as far as can be told now; 0 if none or unknown.

    Under Sentinel: the most replicas a sentinel knows of (down ones too: one
    that comes back may be promoted). On a Cluster: the replica nodes in the
    client's map. Otherwise the master's connected replicas (``INFO
    replication``). A server that refuses to tell counts as unreplicated.
    """
    try:
        found = sentinel_service(client)
        if found is not None:
            manager, service = found
            known = 0
            for sentinel in manager.sentinels:
                try:
                    known = max(known, int(sentinel.sentinel_master(service)["num-slaves"]))
                except CLIENT_ERRORS + _ODD:
                    continue
            return known
        if is_cluster_client(client):
            return len(client.get_replicas())
        return int(client.info("replication").get("connected_slaves", 0))
    except _UNTOLD as error:
        log.info("cachekit could not tell whether Redis has replicas (%s): taken as none", error)
        return 0


class Replication:
    """Runs a write and ``WAIT`` on one connection of ``client``; see the module's docstring.

    ``reply_timeout`` is the client's reply timeout: ``WAIT`` waits at most
    half of it (and :data:`REPLICA_WAIT`), so that its own reply comes in time.
    """

    def __init__(self, client: Any, reply_timeout: float) -> None:
        self._client = client
        self._cluster = is_cluster_client(client)
        self._sentinel = sentinel_service(client) is not None
        self.wait_ms = max(1, int(min(REPLICA_WAIT, reply_timeout / 2) * 1000))

    def run(
        self, script: Any, keys: Sequence[Any], args: Sequence[Any], replicas: int
    ) -> tuple[Any, int]:
        """Run a registered ``script``; its reply and how many replicas acknowledged it.

        With ``replicas`` 0 it is the script's plain call (no ``WAIT``) and the
        count is 0. A script error is raised as the client raises it.
        """
        if replicas <= 0:
            return script(keys=list(keys), args=list(args)), 0
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return self._confirmed(command, replicas, keys[0], script.script)

    def command(self, command: Sequence[Any], key: Any, replicas: int) -> tuple[Any, int]:
        """Send one command on ``key`` with ``WAIT replicas`` behind it (``replicas`` > 0)."""
        return self._confirmed(tuple(command), replicas, key, None)

    def confirm(self, confirmed: int, replicas: int, doing: str, key: str | None = None) -> None:
        """Raise StorageError if fewer than ``replicas`` replicas confirmed a write just made.

        The write is on the master but may be lost (the master dies, or it was
        replaced): it may or may not be kept. The idle connections are closed
        first, so that the next write asks the sentinels for the master again.
        """
        if confirmed >= replicas:
            return
        self.reconnect()
        raise StorageError(
            f"Redis did not replicate a write in time while {doing}: {confirmed} of the"
            f" {replicas} replicas it must reach confirmed it within {self.wait_ms} ms"
            " (CACHEKIT_REDIS_DURABLE_WRITES, CACHEKIT_REDIS_LEASE_REPLICAS). The master has"
            " lost its replicas or is being replaced: the write may or may not be kept",
            key=key,
        )

    def reconnect(self) -> None:
        """Close the client's idle connections: under Sentinel the next asks for the master."""
        if not self._sentinel:
            return
        try:
            self._client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # only a hint to the pool; the next command reconnects anyway
            log.debug("could not close idle connections", exc_info=True)

    def _confirmed(
        self, command: tuple[Any, ...], replicas: int, key: Any, source: str | None
    ) -> tuple[Any, int]:
        target = self._client
        asking = False
        asking_at: tuple[str, int] | None = None
        for attempt in range(REDIRECTS + 1):
            if self._cluster:
                node = cluster_node_client(self._client, address=asking_at) if asking else None
                target = node or cluster_node_client(self._client, key=key)
                if target is None:
                    self._client.exists(key)  # follows the redirection, updating the map
                    target = cluster_node_client(self._client, key=key)
            replies = _pipeline(target, command, replicas, self.wait_ms, asking)
            reply, acknowledged = replies[-2], replies[-1]
            if isinstance(reply, Exception):
                name = type(reply).__name__
                if name == "NoScriptError" and source is not None and attempt < REDIRECTS:
                    # A restart, a SCRIPT FLUSH, or a node that became master (a failover, a
                    # MOVED just followed): nothing ran. Loaded on that node, tried again.
                    target.script_load(source)
                    continue
                if self._cluster and name in ("MovedError", "AskError") and attempt < REDIRECTS:
                    asking = name == "AskError"  # nothing ran on this node
                    asking_at = (getattr(reply, "host", ""), int(getattr(reply, "port", 0)))
                    if not asking:
                        self._client.exists(key)  # the cluster client refreshes its map
                    continue
                raise reply
            if isinstance(acknowledged, Exception):
                raise acknowledged
            return reply, int(acknowledged)
        raise AssertionError("unreachable")  # the loop returns or raises


def _pipeline(
    client: Any, command: tuple[Any, ...], replicas: int, wait_ms: int, asking: bool
) -> list[Any]:
    """``command`` then ``WAIT`` (after ``ASKING`` if ``asking``) on one connection; the replies.

    A non-transactional pipeline: one connection, one round trip, each reply
    (or error) in its place; a connection failure raises.
    """
    pipe = client.pipeline(transaction=False)
    try:
        if asking:
            pipe.execute_command("ASKING")
        pipe.execute_command(*command)
        pipe.execute_command("WAIT", replicas, wait_ms)
        return list(pipe.execute(raise_on_error=False))
    finally:
        pipe.reset()
