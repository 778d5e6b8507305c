"""ZeroMQ CURVE for tcp links: key files, socket setup, and handshake diagnostics.

CURVE (RFC 26) authenticates both ends and encrypts the link; the frames it
carries are unchanged. It applies to ``tcp://`` endpoints only: an ``ipc://``
socket file is guarded by its file permissions and never leaves the node, and
same-node batches are the bulk of the traffic, so they are not paid for twice.
libzmq copies a socket's security options when ``bind`` / ``connect`` is
called, so one socket serves plain ipc and CURVE tcp endpoints side by side:
the plain ones are bound (or connected) first, then CURVE is switched on for
the tcp ones.

Keys are zmq's certificate files (``zmq.auth.create_certificates``): ``NAME.key``
holds the public key and is handed out; ``NAME.key_secret`` holds both and
stays on its host (mode 0600).

A failed handshake is silent in zmq (no message, no error on send), so both
ends watch socket monitor events and log what went wrong, and the server's
ZAP handler logs the public key it turned away.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import zmq
import zmq.auth
import zmq.auth.thread
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("trimmer.curve")

ALLOW_ANY = "*"   # `authorized`: any client key (encryption without client authentication)
SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"
FAILURE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
LINK_EVENTS = FAILURE_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_MONITOR_STOPPED
# The same failure repeats at every reconnect: say it again only this often.
REPEAT_LOG_S = 60.0


def secured(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


# -- key files ----------------------------------------------------------------------


def generate(path) -> tuple[str, str]:
    """Write ``PATH.key`` (public) and ``PATH.key_secret`` (0600); their paths.

    Refuses to overwrite: replacing a key pair silently locks out every peer
    that trusts the old one."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    if not name or name.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX)):
        raise ValueError(f"{path}: give the key pair's base name (writes NAME{PUBLIC_SUFFIX} "
                         f"and NAME{SECRET_SUFFIX})")
    targets = [os.path.join(directory, name + s) for s in (PUBLIC_SUFFIX, SECRET_SUFFIX)]
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        raise ValueError(f"{', '.join(existing)} already exist(s); remove them first to replace the key pair")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # zmq writes with the default mode: the umask keeps the secret from ever
    # being readable by others, even between write and chmod.
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_secret(path, what: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a secret certificate; ValueError naming ``what``."""
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read CURVE secret key file {path}: {exc}") from None
    if not secret:
        raise ValueError(f"{what}: {path} holds no secret key (give the NAME{SECRET_SUFFIX} file)")
    return public, secret


def load_public(path, what: str) -> bytes:
    """A Z85 public key from a certificate file (public or secret)."""
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read CURVE public key file {path}: {exc}") from None
    return public


def _z85(key, what: str) -> bytes:
    """A key given as a 40-character Z85 string or a certificate file."""
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if isinstance(key, str) and len(key) == 40 and not os.path.exists(key):
        return key.encode("ascii")
    return load_public(key, what)


@dataclass(frozen=True)
class ClientKeys:
    """What a connecting socket needs: the server's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_public_key, client_secret_key=None, what: str = "curve") -> "ClientKeys":
        """From files (or Z85 strings). Without a client key, a fresh pair: the
        link is encrypted, and only a server that allows any client accepts it."""
        server = _z85(server_public_key, f"{what}: server_public_key")
        if client_secret_key is None:
            public, secret = zmq.curve_keypair()
        else:
            public, secret = load_secret(client_secret_key, f"{what}: client_secret_key")
        return cls(server, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


@dataclass(frozen=True)
class ServerKeys:
    """What a binding socket needs: its own pair and the clients it lets in."""

    public: bytes
    secret: bytes
    authorized: str      # directory of client public key files, or ALLOW_ANY

    @classmethod
    def load(cls, secret_key, authorized, what: str = "curve") -> "ServerKeys":
        public, secret = load_secret(secret_key, f"{what}: secret_key")
        authorized = os.fspath(authorized)
        if authorized != ALLOW_ANY and not os.path.isdir(authorized):
            raise ValueError(f"{what}: authorized: {authorized} is not a directory of client "
                             f"public keys (or {ALLOW_ANY!r} for any client)")
        return cls(public, secret, authorized)


def connect_all(sock: zmq.Socket, endpoints, keys: ClientKeys | None) -> None:
    """Connect plain endpoints, then (with ``keys``) the tcp ones under CURVE."""
    endpoints = list(endpoints)
    if keys is None:
        for ep in endpoints:
            sock.connect(ep)
        return
    for ep in endpoints:
        if not secured(ep):
            sock.connect(ep)
    keys.apply(sock)
    for ep in endpoints:
        if secured(ep):
            sock.connect(ep)


# -- servers ------------------------------------------------------------------------


class AuthorizedKeys:
    """A ZAP credentials provider over a directory of public key files.

    Re-read when the directory changes, so adding or removing a client's key
    file takes effect at its next connection attempt, without a restart."""

    def __init__(self, directory: str, label: str):
        self.directory = directory
        self.label = label
        self._stamp = None
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
            self._monitor = ServerMonitor(sock, self.label).start()
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


def remove_ipc_files(endpoints) -> None:
    """Unlink the socket files of bound ``ipc://`` endpoints: libzmq leaves
    them behind, and a stale one only confuses operators. Abstract ones
    (``ipc://@name``) have no file."""
    for ep in endpoints:
        if ep.startswith("ipc://") and not ep.startswith("ipc://@"):
            try:
                os.unlink(ep[len("ipc://"):])
            except OSError:
                pass


def bind_all(ctx: zmq.Context, sock: zmq.Socket, endpoints, keys: ServerKeys | None,
             label: str) -> tuple[list[str], ServerSecurity | None]:
    """Bind ``endpoints``; with ``keys``, tcp ones require CURVE. (bound
    endpoints, the ServerSecurity to close after the socket, or None)."""
    if keys is None:
        bound = []
        for ep in endpoints:
            sock.bind(ep)
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        return bound, None
    security = ServerSecurity(ctx, keys, label)
    try:
        return security.bind_all(sock, endpoints), security
    except BaseException:
        security.close()
        raise


# -- handshake diagnostics ----------------------------------------------------------


def describe(event: int, value: int, server: bool, curve: bool = True) -> str:
    """What a failed handshake means, seen from a server or a client (``curve``:
    whether that client uses CURVE)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"rejected a client's CURVE key (ZAP status {value})" if server else
                f"the server rejected this process's CURVE key (ZAP status {value}): add its "
                "public key to the server's authorized keys")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return ("a client without CURVE (or with CURVE against a plain endpoint) was refused"
                    if server else "security mechanism mismatch: one side uses CURVE on this "
                    "endpoint and the other does not")
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return ("a client's CURVE handshake failed to decrypt: it holds the wrong server "
                    "public key" if server else "CURVE handshake failed to decrypt: wrong keys")
        return f"handshake protocol error {value:#x}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if server:
            return "a client's handshake failed"
        if not curve:
            return ("the server closed the connection during the handshake: it probably "
                    "requires CURVE (give its public key)")
        return ("the server closed the connection during the handshake: the server public "
                "key configured here is probably not the server's (or it does not use CURVE)")
    return f"zmq event {event:#x} ({value})"


def drain_events(monitor: zmq.Socket) -> list[tuple[int, int]]:
    """(event, value) pairs waiting on a monitor socket, without blocking."""
    out = []
    while True:
        try:
            msg = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return out
        ev = parse_monitor_message(msg)
        out.append((ev["event"], ev["value"]))


class LinkWatch:
    """Handshake outcome of one connecting socket, read by its owner's thread.

    ``problem`` holds the last failure until a handshake succeeds. libzmq does
    not reconnect after the server rejects the key or the mechanism; ``due``
    says when the owner should reconnect by hand, so that a fixed server
    (its authorized keys updated, or restarted with CURVE) is picked up."""

    RETRY_S = 5.0

    def __init__(self, sock: zmq.Socket, label: str, public_key: bytes | None = None):
        self.label = label
        self.public_key = public_key
        self.monitor = sock.get_monitor_socket(LINK_EVENTS)
        self.problem: str | None = None
        self.retry_at: float | None = None
        self._logged_at = float("-inf")

    def poll(self, now: float) -> None:
        for event, value in drain_events(self.monitor):
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.problem is not None:
                    log.info("%s: CURVE handshake succeeded", self.label)
                self.problem, self.retry_at = None, None
                self._logged_at = float("-inf")
            elif event & FAILURE_EVENTS:
                problem = describe(event, value, server=False)
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.public_key:
                    problem += f" (this side's public key: {self.public_key.decode('ascii')})"
                if problem != self.problem or now - self._logged_at >= REPEAT_LOG_S:
                    log.error("%s: %s", self.label, problem)
                    self._logged_at = now
                self.problem = problem
                if event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # zmq retries those itself
                    self.retry_at = now + self.RETRY_S

    def due(self, now: float) -> bool:
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            return True
        return False

    def close(self, sock: zmq.Socket) -> None:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


class ServerMonitor(threading.Thread):
    """Logs a binding socket's failed handshakes (the ZAP handler logs the
    rejected keys themselves; this catches clients that never reach it)."""

    def __init__(self, sock: zmq.Socket, label: str):
        super().__init__(name=f"curve-monitor-{label}", daemon=True)
        self.label = label
        self.monitor = sock.get_monitor_socket(FAILURE_EVENTS | zmq.EVENT_MONITOR_STOPPED)
        self._sock = sock
        self._stopping = threading.Event()
        self._logged: dict[str, float] = {}

    def start(self) -> "ServerMonitor":
        super().start()
        return self

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.monitor.poll(200):
                    continue
                for event, value in drain_events(self.monitor):
                    if event == zmq.EVENT_MONITOR_STOPPED:
                        return
                    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        continue  # the ZAP handler has logged the key
                    problem = describe(event, value, server=True)
                    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                        # Mostly a client that gave up mid-handshake: not news.
                        log.debug("%s: %s", self.label, problem)
                        continue
                    now = time.monotonic()
                    if now - self._logged.get(problem, float("-inf")) >= REPEAT_LOG_S:
                        self._logged[problem] = now
                        log.warning("%s: %s", self.label, problem)
        except zmq.ZMQError:
            pass  # the context is terminating
        finally:
            self.monitor.close(linger=0)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2)


__all__ = ["ALLOW_ANY", "ClientKeys", "ServerKeys", "ServerSecurity", "LinkWatch",
           "bind_all", "connect_all", "generate", "load_public", "load_secret", "secured",
           "describe", "drain_events"]
