"""Binding and connecting a socket's endpoints, plain and CURVE side by side.

libzmq copies a socket's security options when ``bind`` / ``connect`` is
called, so one socket serves plain ipc and CURVE tcp endpoints: the plain
ones are bound (or connected) first, then CURVE is switched on for the tcp
ones.
"""
from __future__ import annotations

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


__all__ = ["bind_all", "connect_all", "remove_ipc_files", "secured"]
