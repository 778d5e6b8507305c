"""The server side of CURVE: which client keys a binding socket lets in.

libzmq asks a ZAP handler, looked up per context at a fixed inproc address,
to approve each CURVE handshake. `ServerSecurity` runs one handler per
context, gives each secured socket its own ZAP domain and dispatches on it,
and logs the keys it turns away.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import zmq
import zmq.auth
import zmq.auth.thread

from .curve import ALLOW_ANY, ServerKeys
from .monitor import REPEAT_LOG_S, ServerMonitor, secured

log = logging.getLogger("trimmer.curve")


class AuthorizedKeys:
    """A ZAP credentials provider over a directory of public key files.

    Re-read when the directory changes, so adding or removing a client's key
    file takes effect at its next connection attempt, without a restart."""

    def __init__(self, directory: str, label: str):
        self.directory = directory
        self.label = label
        self._stamp: int | str | None = None   # the directory's mtime, or "missing"
        self._keys: set[bytes] = set()
        self._logged: dict[bytes, float] = {}

    def _reload(self) -> None:
        try:
            stamp = os.stat(self.directory).st_mtime_ns
        except OSError as exc:
            if self._stamp != "missing":
                log.error("%s: authorized keys directory unreadable: %s", self.label, exc)
            self._stamp, self._keys = "missing", set()
            return
        if stamp != self._stamp:
            self._stamp = stamp
            self._keys = set(zmq.auth.load_certificates(self.directory))

    def callback(self, domain: str, key: bytes) -> bool:
        self._reload()
        if key in self._keys:
            return True
        now = time.monotonic()
        if now - self._logged.get(key, float("-inf")) >= REPEAT_LOG_S:
            self._logged[key] = now
            log.warning("%s: rejected a client: its CURVE public key %s is not in %s",
                        self.label, key.decode("ascii", "replace"), self.directory)
        return False


class _AnyKey:
    def callback(self, domain: str, key: bytes) -> bool:
        return True


class ServerSecurity:
    """CURVE on a binding socket's tcp endpoints: its ZAP handler and its log.

    The ZAP handler is per context (libzmq looks it up by a fixed inproc
    address), so each secured socket gets its own ZAP domain and the handler
    dispatches on it."""

    _lock = threading.Lock()
    _handlers: dict[int, list] = {}   # id(context) -> [ThreadAuthenticator, users]

    def __init__(self, ctx: zmq.Context, keys: ServerKeys, label: str):
        self.ctx, self.keys, self.label = ctx, keys, label
        self.domain = f"trimmer-{label}-{id(self):x}"
        self._monitor: ServerMonitor | None = None
        with self._lock:
            entry = self._handlers.get(id(ctx))
            if entry is None:
                auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=logging.getLogger("trimmer.zap"))
                auth.start()
                entry = self._handlers[id(ctx)] = [auth, 0]
            entry[1] += 1
            self._auth = entry[0]
        provider = _AnyKey() if keys.authorized == ALLOW_ANY else AuthorizedKeys(keys.authorized, label)
        self._auth.configure_curve_callback(domain=self.domain, credentials_provider=provider)

    def bind_all(self, sock: zmq.Socket, endpoints) -> list[str]:
        """Bind plain endpoints, then the tcp ones under CURVE; the bound
        endpoints in the order given."""
        endpoints = list(endpoints)
        bound: dict[int, str] = {}
        for i, ep in enumerate(endpoints):
            if not secured(ep):
                sock.bind(ep)
                bound[i] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.setsockopt_string(zmq.ZAP_DOMAIN, self.domain)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        for i, ep in enumerate(endpoints):
            if secured(ep):
                sock.bind(ep)
                bound[i] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._monitor is None:
            self._monitor = ServerMonitor(sock, self.label)
            self._monitor.start()
        return [bound[i] for i in range(len(endpoints))]

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        with self._lock:
            entry = self._handlers.get(id(self.ctx))
            if entry is None or entry[0] is not self._auth:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del self._handlers[id(self.ctx)]
                self._auth.stop()

__all__ = ["AuthorizedKeys", "ServerSecurity"]
