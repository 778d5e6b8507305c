"""Binding and connecting a socket's endpoints, plain and CURVE side by side.

libzmq copies a socket's security options when ``bind`` / ``connect`` is
called, so one socket serves plain ipc and CURVE tcp endpoints: the plain
ones are bound (or connected) first, then CURVE is switched on for the tcp
ones.

An ipc socket file is made mode IPC_MODE (owner and group may connect,
nobody else) as soon as it is bound, whatever the process's umask. Which tcp
binds other hosts can reach (`is_loopback`) decides whether settings must
say ``insecure`` (`exposed`).

libzmq binding an ipc endpoint replaces whatever socket file is there, a
live process's too, and nothing would say so: `check_free` refuses an
endpoint (or a metrics port) a live process holds, before a process binds
anything. A process removes only the socket files it bound itself, and only
while they are still the ones it bound (`remove_ipc_files`).
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket

import zmq

from _trim.errors import ConfigError

from .curve import ClientKeys, ServerKeys
from .monitor import secured
from .zap import ServerSecurity


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


IPC_MODE = 0o660


def is_loopback(endpoint: str) -> bool:
    """Whether a ``tcp://`` endpoint's host is this machine's loopback
    (127.0.0.0/8, ::1, localhost); a wildcard, an interface name or any other
    address is reachable from elsewhere."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ANY_KEY = "*"


def exposed(endpoints, secret_key, authorized) -> list[str]:
    """The tcp binds among ``endpoints`` that anyone reaching the host may use:
    not loopback, and no client authentication configured (CURVE with
    ``authorized`` a directory of trusted keys; ``"*"`` trusts any key)."""
    if secret_key and authorized not in (None, ANY_KEY):
        return []
    return [ep for ep in endpoints if ep.startswith("tcp://") and not is_loopback(ep)]


def exposure_problem(endpoints, peers: str, what: str) -> str:
    """Why settings binding ``endpoints`` (see `exposed`) are refused: anyone
    reaching them can ``what``; ``peers`` are who should hold the keys."""
    return (f"bind {', '.join(endpoints)}: tcp on an address other hosts can reach, without "
            f"client authentication: anyone who reaches it can {what}. Set curve.secret_key and "
            f"curve.authorized (a directory of the {peers}' public keys), bind 127.0.0.1, or set "
            "insecure: true (--insecure) to accept it")


def exposures(endpoints, metrics_addr: str, metrics_port, peers: str, what: str) -> list[str]:
    """What a process opens to other hosts, to say loudly at each start: the
    binds `exposed` allowed by ``insecure``, and metrics off loopback."""
    out = []
    if endpoints:
        out.append(f"INSECURE: {peers} on {', '.join(endpoints)} are not authenticated "
                   f"(insecure: true): anyone who reaches them can {what}")
    if metrics_port and not is_loopback(f"tcp://{metrics_addr}:0"):
        out.append(f"metrics on {metrics_addr}:{metrics_port} are readable by anyone who "
                   "reaches it (model names, endpoints, config ids)")
    return out


def bind_all(ctx: zmq.Context, sock: zmq.Socket, endpoints, keys: ServerKeys | None,
             label: str) -> tuple[list[str], ServerSecurity | None]:
    """Bind ``endpoints``; with ``keys``, tcp ones require CURVE. (bound
    endpoints, the ServerSecurity to close after the socket, or None)."""
    if keys is None:
        bound = []
        for ep in endpoints:
            sock.bind(ep)
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        _restrict_ipc_files(bound)
        return bound, None
    security = ServerSecurity(ctx, keys, label)
    try:
        bound = security.bind_all(sock, endpoints)
        _restrict_ipc_files(bound)
        return bound, security
    except BaseException:
        security.close()
        raise


# The socket files this process bound: path -> (st_dev, st_ino).
_OWNED: dict[str, tuple[int, int]] = {}


def ipc_file(endpoint: str) -> str | None:
    """The socket file of an ``ipc://`` endpoint; None for another transport
    or an abstract one (``ipc://@name``)."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return endpoint[len("ipc://"):]
    return None


def _restrict_ipc_files(endpoints) -> None:
    for ep in endpoints:
        path = ipc_file(ep)
        if path is not None:
            os.chmod(path, IPC_MODE)
            st = os.stat(path)
            _OWNED[path] = (st.st_dev, st.st_ino)


def remove_ipc_files(endpoints) -> None:
    """Unlink the socket files of ``ipc://`` endpoints this process bound:
    libzmq leaves them behind, and a stale one only confuses operators. A
    file this process did not bind, or that is another one now (a process
    that bound the path since), is left alone. Abstract ones
    (``ipc://@name``) have no file."""
    for ep in endpoints:
        path = ipc_file(ep)
        if path is None or path not in _OWNED:
            continue
        owned = _OWNED.pop(path)
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == owned:
                os.unlink(path)
        except OSError:
            pass


def _ipc_answers(path: str) -> bool:
    """Whether a live process accepts connections on the socket file ``path``."""
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
        return True
    except OSError:   # refused (a stale file), not a socket, gone meanwhile
        return False
    finally:
        probe.close()


def _tcp_busy(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because the address is in use (as
    a listening socket would: SO_REUSEADDR, so TIME_WAIT is no obstacle)."""
    host = {"*": "0.0.0.0", "": "0.0.0.0"}.get(host, host.strip("[]"))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False   # an interface name or an unknown host: libzmq says what is wrong
    for family, kind, proto, _, addr in infos[:1]:
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        finally:
            probe.close()
    return False


def check_free(endpoints, metrics_addr: str = "127.0.0.1", metrics_port=None) -> None:
    """ConfigError naming each of ``endpoints`` (and the metrics port) that a
    live process holds: an ipc socket file a process answers on (binding
    would silently take it over), a tcp port already bound. Called before a
    process binds or connects anything, so that it exits 2 having touched
    nothing; a stale socket file (nobody answers) is replaced as usual."""
    problems = []
    for ep in endpoints:
        path = ipc_file(ep)
        if path is not None and _ipc_answers(path):
            problems.append(f"{ep} is in use by a live process (its socket file answers): "
                            "stop that process or bind another path")
        elif ep.startswith("tcp://"):
            host, _, port = ep[len("tcp://"):].rpartition(":")
            if port.isdigit() and int(port) and _tcp_busy(host, int(port)):
                problems.append(f"{ep} is in use (address already in use)")
    if metrics_port and _tcp_busy(metrics_addr, int(metrics_port)):
        problems.append(f"metrics port {metrics_port} on {metrics_addr} is in use (address "
                        "already in use): choose another metrics_port (--metrics-port), or 0 "
                        "for none")
    if problems:
        raise ConfigError("cannot start: " + "; ".join(problems))


__all__ = ["ANY_KEY", "IPC_MODE", "bind_all", "check_free", "connect_all", "exposed",
           "exposure_problem", "exposures", "ipc_file", "is_loopback", "remove_ipc_files",
           "secured"]
