"""The root's client-facing ROUTER socket: how it is opened, and the one way
a reply goes out through it.

`ClientSocket` makes the socket from the settings (limits, binds, CURVE on
tcp binds: rootproc/security.py). The serving loop (rootproc/server.py)
reads it; `ClientReplies` is its send side, handed to whoever answers
clients: the loop for what it refuses or answers itself (pings, errors
before a request reaches the router), the router (rootproc/router.py) for
each request it holds. It counts each reply's outcome as it sends it.
"""
from __future__ import annotations

import logging

import zmq

from _trim.transport.frames import NOBLOCK, send_frames
from _trim.transport.protocol import MAX_HEADER_NBYTES, ProtocolError
from rootproc.defaults import CLIENT_HWM, DRAIN_LINGER_MS, FRAME_HARD_CAP_FACTOR
from rootproc.reply import error_reply, scores_reply
from rootproc.security import bind_frontend
from rootproc.settings import RootSettings

log = logging.getLogger("rootproc")


class ClientSocket:
    """The ROUTER socket clients send to, bound to ``cfg.bind``."""

    def __init__(self, ctx: zmq.Context, cfg: RootSettings):
        self.socket = ctx.socket(zmq.ROUTER)
        self.security = None
        # The most one frame, and one message in all, may hold: rules
        # `envelope.hard-cap` and `envelope.frames-limit`.
        self.hard_cap = FRAME_HARD_CAP_FACTOR * max(cfg.max_request_nbytes, MAX_HEADER_NBYTES)
        try:
            self.socket.setsockopt(zmq.LINGER, DRAIN_LINGER_MS)
            self.socket.setsockopt(zmq.RCVHWM, CLIENT_HWM)
            self.socket.setsockopt(zmq.SNDHWM, CLIENT_HWM)
            # Frames up to the hard cap are read and answered `too_large`; a
            # frame past it (an attack, not a mistake) drops the connection
            # before the root buffers gigabytes of it.
            self.socket.setsockopt(zmq.MAXMSGSIZE, self.hard_cap)
            self.security = bind_frontend(ctx, self.socket, cfg)  # CURVE on tcp binds, if set
        except BaseException:
            self.socket.close(linger=0)
            raise
        # What the binds became (a tcp port 0 is chosen by the kernel).
        self.endpoints = [self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()] \
            if len(cfg.bind) == 1 else list(cfg.bind)

    def close(self) -> None:
        """Close the socket (replies already queued get DRAIN_LINGER_MS), then
        its CURVE handler."""
        self.socket.close(linger=DRAIN_LINGER_MS)
        if self.security is not None:
            self.security.close()


class ClientReplies:
    """The send side of the client socket: a reply never waits for a slow
    client (one whose queue is full loses it, logged)."""

    def __init__(self, socket: zmq.Socket, root_name: str, metrics):
        self.socket = socket
        self.root_name = root_name
        self.metrics = metrics

    def send(self, envelope, frames) -> None:
        """``frames`` to the client ``envelope`` names."""
        try:
            send_frames(self.socket, list(envelope) + list(frames), NOBLOCK)
        except zmq.Again:
            log.warning("client reply dropped: the client's queue is full")

    def error(self, envelope, rid, error: ProtocolError) -> None:
        """Request ``rid``'s ``error`` reply; counted as a failed request."""
        self.metrics.requests.labels("error").inc()
        self.metrics.errors.labels(error.kind).inc()
        self.send(envelope, [error_reply(rid, error)])

    def scores(self, request) -> None:
        """The ``scores`` reply of a request the router holds (rootproc/router.py
        `OpenRequest`); counts its outcome."""
        self.send(request.envelope, scores_reply(request, self.root_name, self.metrics))


__all__ = ["ClientReplies", "ClientSocket"]
