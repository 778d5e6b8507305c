"""A TCP forwarder in front of a real Redis that can trickle its replies.

    proxy = TrickleProxy(redis_server.port).start()
    ... connect to proxy.port ...
    proxy.trickle(64, 0.02)   # the server's bytes reach clients 64 at a time, every 20 ms
    proxy.flow()              # at once again
    proxy.close()

Requests go to the server at once: only what comes back is slowed, as from a
server, or a network, that drips its answer.
"""
from __future__ import annotations

import socket
import threading
import time

from tests.support.procs import free_tcp_port


class TrickleProxy:
    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.port = free_tcp_port()
        self.chunk: int | None = None
        self.pause_s = 0.0
        self._halt = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []

    def start(self) -> TrickleProxy:
        self._spawn(self._accept)
        return self

    def trickle(self, chunk: int, pause_s: float) -> None:
        self.chunk, self.pause_s = chunk, pause_s

    def flow(self) -> None:
        self.chunk = None

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._halt.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, server]
            self._spawn(self._pipe, client, server, False)
            self._spawn(self._pipe, server, client, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, slowed: bool) -> None:
        src.settimeout(0.1)
        while not self._halt.is_set():
            try:
                data = src.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                while data:
                    chunk = self.chunk if slowed else None
                    if chunk is None:
                        dst.sendall(data)
                        break
                    dst.sendall(data[:chunk])
                    data = data[chunk:]
                    time.sleep(self.pause_s)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._halt.set()
        self._listener.close()
        for t in self._threads:
            t.join(2)
        with self._lock:
            for s in self._socks:
                s.close()
