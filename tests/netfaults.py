"""A network between a client and Redis that can fail the way networks do (tests only).

:class:`BlackholeProxy` forwards TCP both ways until told to swallow: then every
byte is read and dropped, with no reset and no close, as a partition that drops
packets looks to both ends (the client's reply never comes; the server sees an
idle connection). Clearing it heals the partition for every connection.
"""

from __future__ import annotations

import socket
import threading


class BlackholeProxy:
    """A TCP proxy to a loopback port that can swallow every byte for a while (packets dropped)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.swallowing = threading.Event()
        self.swallowed = 0  # bytes dropped while swallowing: proof that the partition bit
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    break
                if self.swallowing.is_set():
                    self.swallowed += len(data)
                else:
                    sink.sendall(data)
            except OSError:
                break
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        self.listener.close()
