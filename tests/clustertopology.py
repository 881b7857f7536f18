"""A real Redis Cluster of three masters and three replicas, on free loopback ports (tests only).

Made the way an operator makes one: six ``redis-server --cluster-enabled yes``
processes, then ``redis-cli --cluster create ... --cluster-replicas 1``.
``cluster-node-timeout`` is short (1 s) so that a killed master's replica is
promoted within seconds. :meth:`ClusterTopology.stop` stops every process,
whatever state a test left the cluster in.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from .redisserver import RedisServer, free_port, in_ci

#: Milliseconds a node may be unreachable before the others count it failed.
NODE_TIMEOUT = 1000


def key_slot(key: str) -> int:
    """The hash slot of ``key``."""
    from redis.crc import key_slot as slot_of

    return int(slot_of(key.encode()))


def lease_slot(cache: Any, name: str) -> int:
    """The hash slot of lock ``name``'s lease in ``cache`` (a cluster backend)."""
    from cachekit.redis.leases import RedisLeases
    from cachekit.resolve import strategy_for
    from cachekit.threadlocks import LOCKS

    leases = strategy_for(cache)._locks
    assert isinstance(leases, RedisLeases)
    return key_slot(leases.key(leases.stripe(LOCKS, name)))


def redis_cli() -> str:
    """The path of redis-cli (it builds and reshards clusters); skips locally, fails in CI."""
    found = shutil.which("redis-cli")
    if found is None:
        message = "redis-cli is not installed (apt-get install -y redis-tools)"
        if in_ci():
            pytest.fail(message + ": CI must run the Cluster tests")
        pytest.skip(message)
    return found


class ClusterTopology:
    """Three masters with a replica each; every hash slot served."""

    def __init__(self, directory: Path, binary: str, *, masters: int = 3) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []
        for number in range(2 * masters):
            folder = directory / f"node{number}"
            folder.mkdir(parents=True, exist_ok=True)
            node = RedisServer(folder, binary=binary)
            node.port = free_port(with_bus=True)
            node.url = f"redis://127.0.0.1:{node.port}/0"
            node.extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT),
                "--cluster-require-full-coverage", "no",
                # A replica's full sync starts at once (the default waits 5 s for more).
                "--repl-diskless-sync-delay", "0",
            )  # fmt: skip
            self.nodes.append(node)

    @property
    def startup(self) -> str:
        """``host:port`` of the first node that runs, for ``CACHE_REDIS_CLUSTER``."""
        live = [node for node in self.nodes if node.process is not None]
        return ",".join(f"127.0.0.1:{node.port}" for node in live)

    def start(self, wait: float = 60.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    redis_cli(), "--cluster", "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas", "1", "--cluster-yes",
                ],
                check=True, capture_output=True, timeout=wait,
            )  # fmt: skip
            self.wait_stable(wait)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # stop the others whatever happens
                if node.process is not None:
                    node.process.kill()
                    node.process = None

    def client(self, node: RedisServer) -> Any:  # (redis-py's execute_command is untyped)
        return redis.Redis(port=node.port, socket_timeout=5)

    def migrate(self, slot: int, pause: float) -> tuple[RedisServer, RedisServer]:
        """Move ``slot`` to another master as ``redis-cli --cluster reshard`` does (``SETSLOT
        ... IMPORTING/MIGRATING``, ``MIGRATE`` a key at a time with ``pause`` s between,
        ``SETSLOT ... NODE`` on every master): operations meanwhile meet ``ASK`` and then
        ``MOVED``. Returns (from, to)."""
        source = next(n for n in self.masters() if any(a <= slot <= b for a, b in self._owned(n)))
        target = next(n for n in self.masters() if n is not source)
        source_id, target_id = self.node_id(source), self.node_id(target)
        to_source, to_target = self.client(source), self.client(target)
        try:
            to_target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            to_source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := to_source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
                to_source.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
                time.sleep(pause)
            for node in self.masters():
                client = self.client(node)
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                finally:
                    client.close()
        finally:
            to_source.close()
            to_target.close()
        return source, target

    def role(self, node: RedisServer) -> str:
        client = self.client(node)
        try:
            return str(client.info("replication")["role"])
        finally:
            client.close()

    def masters(self, excluding: RedisServer | None = None) -> list[RedisServer]:
        """The live masters (but ``excluding``: a stopped node answers nothing)."""
        return [
            node
            for node in self.nodes
            if node.process is not None and node is not excluding and self.role(node) == "master"
        ]

    def master_of(self, key: str) -> RedisServer:
        """The live master that serves ``key``'s hash slot now."""
        return self.master_of_slot(key_slot(key))

    def master_of_slot(self, slot: int, excluding: RedisServer | None = None) -> RedisServer:
        """The live master that serves hash slot ``slot`` now (by the masters' own word, but
        ``excluding``'s: a stopped node answers nothing, and a resumed one may not know)."""
        for node in self.masters(excluding):
            owned = self._owned(node)
            if any(start <= slot <= end for start, end in owned):
                return node
        raise AssertionError(f"no live master serves slot {slot}")

    def _owned(self, node: RedisServer) -> list[tuple[int, int]]:
        """The slot ranges ``node`` itself serves, as its own CLUSTER NODES line says."""
        client = self.client(node)
        try:
            lines = client.execute_command("CLUSTER", "NODES")
        finally:
            client.close()
        text = lines.decode() if isinstance(lines, bytes) else str(lines)
        for line in text.splitlines():
            fields = line.split()
            if "myself" in fields[2]:
                ranges = []
                for part in fields[8:]:
                    if part.startswith("["):
                        continue  # a slot being migrated or imported
                    first, _, last = part.partition("-")
                    ranges.append((int(first), int(last or first)))
                return ranges
        return []

    def wait_promoted(self, key: str, old: RedisServer, wait: float = 30.0) -> RedisServer:
        """Until a live master other than ``old`` serves ``key``'s slot; that master."""
        return self.wait_promoted_slot(key_slot(key), old, wait)

    def wait_promoted_slot(self, slot: int, old: RedisServer, wait: float = 30.0) -> RedisServer:
        """Until a live master other than ``old`` serves ``slot``; that master."""
        deadline = time.monotonic() + wait
        while True:
            try:
                found = self.master_of_slot(slot)
                if found is not old:
                    return found
            except (AssertionError, OSError, redis.RedisError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over slot {slot} within {wait} s")
            time.sleep(0.1)

    def node_id(self, node: RedisServer) -> str:
        client = self.client(node)
        try:
            return str(client.execute_command("CLUSTER", "MYID").decode())
        finally:
            client.close()

    def synced(self, node: RedisServer) -> bool:
        """Whether ``node`` is a master, or a replica whose link to its master is up."""
        client = self.client(node)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return bool(info["role"] == "master" or info.get("master_link_status") == "up")

    def wait_stable(self, wait: float = 60.0, masters: int = 3) -> None:
        """Until every live node says ``cluster_state:ok``, ``masters`` masters serve slots and
        every live replica's link to its master is up (so ``WAIT`` can be answered)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                live = [node for node in self.nodes if node.process is not None]
                states = [node.ask("CLUSTER INFO") for node in live]
                serving = [n for n in self.masters() if self._owned(n)]
                if (
                    all(b"cluster_state:ok" in state for state in states)
                    and len(serving) == masters
                    and all(self.synced(node) for node in live)
                ):
                    return
            except (OSError, redis.RedisError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become stable")
            time.sleep(0.1)
