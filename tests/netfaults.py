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
            pair = id(client)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, pair, source is client), daemon=True
                ).start()

    def cut_off(self, pair: int, from_client: bool, data: bytes) -> bool:
        """Whether these bytes of connection ``pair`` are dropped now: all of them, while
        ``swallowing`` is set (a subclass narrows it to some connections)."""
        return self.swallowing.is_set()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: int, from_client: bool
    ) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    break
                if self.cut_off(pair, from_client, data):
                    self.swallowed += len(data)
                else:
                    sink.sendall(data)
            except OSError:
                break
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        self.listener.close()
