"""A TCP forwarder a test can cut: one client's path to a server, broken
and restored while the server and everyone else carry on.

    proxy = TcpProxy("127.0.0.1", zk.port).start()
    ... connect to proxy.port ...
    proxy.cut()        # every connection closed, new ones refused
    proxy.restore()    # accepting again, on the same port
    proxy.close()
"""
from __future__ import annotations

import selectors
import socket
import threading

from tests.support.procs import free_tcp_port


class TcpProxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_tcp_port()
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._halt = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self.restore()
        self._thread.start()
        return self

    def restore(self) -> None:
        with self._lock:
            if self._listener is None:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", self.port))
                s.listen(64)
                s.setblocking(False)
                self._listener = s
                self._sel.register(s, selectors.EVENT_READ)
        self._wake_w.send(b"x")

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._sel.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._pairs):
                self._drop(sock)
        self._wake_w.send(b"x")

    def _drop(self, sock) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _run(self) -> None:
        while not self._halt:
            for key, _ in self._sel.select(0.5):
                sock = key.fileobj
                with self._lock:
                    if sock is self._wake_r:
                        self._wake_r.recv(4096)
                    elif sock is self._listener:
                        self._accept()
                    elif sock in self._pairs:
                        try:
                            data = sock.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            self._drop(sock)
                            continue
                        try:
                            self._pairs[sock].sendall(data)
                        except OSError:
                            self._drop(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()   # type: ignore[union-attr]
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(True)
            self._sel.register(s, selectors.EVENT_READ)
        self._pairs[client], self._pairs[upstream] = upstream, client

    def close(self) -> None:
        self.cut()
        self._halt = True
        self._thread.join(5)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
