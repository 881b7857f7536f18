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
    """The path of redis-server; skips the test locally and fails it in CI when missing."""
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install -y redis-server)"
        if in_ci():
            pytest.fail(message + ": CI must run the Redis tests")
        pytest.skip(message)
    return found


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
    ) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
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
                f"sentinel monitor mymaster 127.0.0.1 {self.sentinel_of} 1\n"
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
        self.process = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
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
