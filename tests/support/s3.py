"""A real S3-API server for tests, and a TCP path to it a test can break.

`MotoServer` is moto's standalone server (``python -m moto.server``, from
PyPI ``moto[server]``) on a free loopback port: it serves the S3 API over
HTTP, keeping objects in memory (a restart starts empty). ``env`` is what a
process needs to reach it the usual way (botocore's ``AWS_*`` variables).

`CappedProxy` forwards TCP to it; ``cap(n)`` makes every connection close
once it has carried ``n`` bytes back to the client (a download killed
halfway, whatever the client retries), ``down()`` refuses connections (the
store unreachable), ``restore()`` forwards in full again.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import urllib.request

from .procs import free_tcp_port
from .services import ServerProcess, require, tail


def require_moto() -> None:
    have = all(importlib.util.find_spec(m) is not None for m in ("moto", "flask", "s3fs", "boto3"))
    require(have, "moto[server] and s3fs are not installed (pip install -e '.[s3,test]')")


class MotoServer(ServerProcess):
    name = "moto_server"

    def __init__(self, tmp_path, port: int | None = None):
        super().__init__()
        self.port = port or free_tcp_port()
        self.log_path = os.path.join(os.fspath(tmp_path), f"moto-{self.port}.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, endpoint: str | None = None) -> dict:
        """The environment a process reaches this server (or ``endpoint``) with."""
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_MAX_ATTEMPTS": "2"}

    def _popen(self) -> subprocess.Popen:
        log = open(self.log_path, "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                     "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def serving(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except Exception:
            return False

    def log(self) -> str:
        return tail(self.log_path)

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")


class CappedProxy:
    """TCP forwarding from a free loopback port to ``port``, one thread per direction."""

    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.port = free_tcp_port()
        self.limit: int | None = None     # bytes back to the client per connection
        self.refusing = False
        self.cut_connections = 0          # connections closed by the cap
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, name="s3-proxy", daemon=True)
        self._accepting.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cap(self, nbytes: int) -> None:
        self.limit, self.refusing = nbytes, False

    def down(self) -> None:
        self.refusing = True
        self._close_all()

    def restore(self) -> None:
        self.limit, self.refusing = None, False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing or self._closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            for src, dst, capped in ((client, upstream, False), (upstream, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, capped), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, capped: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if capped and self.limit is not None and sent + len(data) > self.limit:
                    dst.sendall(data[:max(0, self.limit - sent)])
                    self.cut_connections += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            self._shut(s)

    def _shut(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def _close_all(self) -> None:
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._shut(s)

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepting.join(5)
        self._close_all()
        for t in self._threads:
            t.join(5)


__all__ = ["CappedProxy", "MotoServer", "require_moto"]
