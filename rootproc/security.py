"""CURVE on the root's client-facing socket (the leaf links: rootproc/leaves/replicas.py).

With ``curve.authorized`` in the root config, the root's tcp binds require
CURVE from clients whose public keys are in that directory (``"*"``: any
key, encryption only); ipc binds stay plain. See _trim/curve.py.
"""
from __future__ import annotations

import zmq

from _trim.transport.curve import ServerKeys
from _trim.transport.sockets import bind_all
from _trim.transport.zap import ServerSecurity
from rootproc.settings import RootSettings


def frontend_keys(cfg: RootSettings) -> ServerKeys | None:
    """The root's CURVE server keys for its tcp binds, or None (reads the files)."""
    if cfg.curve is None or not cfg.curve.authorized:
        return None
    return ServerKeys.load(cfg.curve.secret_key, cfg.curve.authorized, "root config: curve")


def bind_frontend(ctx: zmq.Context, sock: zmq.Socket, cfg: RootSettings) -> ServerSecurity | None:
    """Bind ``cfg.bind`` on ``sock``; the ServerSecurity to close after the
    socket, or None when the binds are plain."""
    _, security = bind_all(ctx, sock, cfg.bind, frontend_keys(cfg), f"root {cfg.name}")
    return security


__all__ = ["bind_frontend", "frontend_keys"]
