"""Binding and connecting a socket's endpoints, plain and CURVE side by side.

libzmq copies a socket's security options when ``bind`` / ``connect`` is
called, so one socket serves plain ipc and CURVE tcp endpoints: the plain
ones are bound (or connected) first, then CURVE is switched on for the tcp
ones.

An ipc socket file is made mode IPC_MODE (owner and group may connect,
nobody else) as soon as it is bound, whatever the process's umask. Which tcp
binds other hosts can reach (`is_loopback`) decides whether settings must
say ``insecure`` (`exposed`).
"""
from __future__ import annotations

import ipaddress
import os

import zmq

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


def _restrict_ipc_files(endpoints) -> None:
    for ep in endpoints:
        if ep.startswith("ipc://") and not ep.startswith("ipc://@"):
            os.chmod(ep[len("ipc://"):], IPC_MODE)


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


__all__ = ["ANY_KEY", "IPC_MODE", "bind_all", "connect_all", "exposed", "exposure_problem",
           "exposures", "is_loopback", "remove_ipc_files", "secured"]
