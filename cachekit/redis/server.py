"""What the live Redis server says about keeping state: eviction, persistence, version.

Read with ``INFO`` (which managed services allow where they refuse
``CONFIG``), plus ``CONFIG GET save`` for snapshots. Used at first use (a
policy that would evict state is refused with
:class:`~cachekit.errors.ConfigurationError`) and by ``flask cachekit
doctor``. Where the server refuses a command, the finding says so and the
check goes on.

Why ``allkeys-*`` is refused and ``volatile-*`` is not: with ``maxmemory``
set, an ``allkeys-*`` policy may evict any key, so a counter would silently
restart at 1 and a lease vanish while held; a ``volatile-*`` policy evicts
only keys with a TTL, and neither cachekit's leases and fencing counters nor
state written without a timeout have one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import redis

#: Oldest server cachekit accepts (SET ... KEEPTTL).
MIN_VERSION: Final = (6, 2)


@dataclass(frozen=True)
class ServerFacts:
    """What could be read of one server (or every primary of a cluster)."""

    versions: tuple[str, ...] = ()
    #: (maxmemory in bytes, maxmemory-policy) of each node that answered INFO memory.
    memory: tuple[tuple[int, str], ...] = ()
    #: Whether append-only persistence is on, per node that answered INFO persistence.
    aof: tuple[bool, ...] = ()
    #: The ``save`` setting (RDB snapshots), per node that answered CONFIG GET save.
    save: tuple[str, ...] = ()
    #: What the server refused to tell, with its answer.
    refused: tuple[str, ...] = field(default=())


def _per_node(reply: Any) -> list[dict[str, Any]]:
    """INFO's reply as one dict per node (a cluster answers with one per node)."""
    if isinstance(reply, dict) and reply and all(isinstance(v, dict) for v in reply.values()):
        if not any(k in reply for k in ("redis_version", "maxmemory", "aof_enabled")):
            return list(reply.values())
    return [reply] if isinstance(reply, dict) else []


def _ask(client: Any, refused: list[str], what: str, call: Any) -> list[dict[str, Any]]:
    try:
        return _per_node(call())
    except redis.exceptions.ResponseError as error:  # NOPERM, unknown command, ...
        refused.append(f"{what}: {error}")
        return []


def read_facts(client: Any) -> ServerFacts:
    """Ask the server; connection errors propagate (the caller translates them)."""
    refused: list[str] = []
    servers = _ask(client, refused, "INFO server", lambda: client.info("server"))
    memory = _ask(client, refused, "INFO memory", lambda: client.info("memory"))
    persistence = _ask(client, refused, "INFO persistence", lambda: client.info("persistence"))
    saves: list[str] = []
    try:
        reply = client.config_get("save")
        values = reply.values() if isinstance(reply, dict) else []
        for value in values:
            saves.append(value if isinstance(value, str) else str(value.get("save", "")))
    except redis.exceptions.ResponseError as error:
        refused.append(f"CONFIG GET save: {error}")
    return ServerFacts(
        versions=tuple(str(node.get("redis_version", "")) for node in servers),
        memory=tuple(
            (int(node.get("maxmemory", 0) or 0), str(node.get("maxmemory_policy", "")))
            for node in memory
        ),
        aof=tuple(bool(int(node.get("aof_enabled", 0) or 0)) for node in persistence),
        save=tuple(saves),
        refused=tuple(refused),
    )


def eviction_problem(facts: ServerFacts) -> str | None:
    """Why the server may evict state without a TTL, or None."""
    for maxmemory, policy in facts.memory:
        if maxmemory and policy.startswith("allkeys-"):
            return (
                f"Redis has maxmemory-policy {policy} with maxmemory {maxmemory}: when memory"
                " runs short it evicts any key, so cachekit's counters would silently restart"
                " and its locks vanish while held. Set maxmemory-policy to noeviction (writes"
                " fail clearly when memory is full) or a volatile-* policy (only keys with a"
                " timeout are evicted), or give this state a Redis of its own"
            )
    return None


def version_problem(facts: ServerFacts) -> str | None:
    """Why the server is too old for cachekit, or None."""
    for version in facts.versions:
        try:
            numbers = tuple(int(part) for part in version.split(".")[:2])
        except ValueError:
            continue
        if numbers < MIN_VERSION:
            wanted = ".".join(map(str, MIN_VERSION))
            return f"Redis {version} is older than {wanted}, which cachekit needs (SET KEEPTTL)"
    return None


def persistence_warning(facts: ServerFacts) -> str | None:
    """Why a restart of the server would lose every counter, or None (or unknown)."""
    if not facts.aof or any(facts.aof) or not facts.save:
        return None  # persisted, or unknown (a refusal is reported on its own)
    if all(not save.strip() for save in facts.save):
        return (
            'Redis persists nothing (appendonly no, save ""): a restart resets every'
            " counter and erases every lease (holders are told LeaseLost). Turn on"
            " appendonly yes (or RDB snapshots, which lose the last minutes)"
        )
    return None
