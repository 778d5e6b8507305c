"""Connections from the root to leaf replicas, their health and load.

One DEALER socket per replica endpoint, so that the root, not zmq's
round-robin, picks the replica: the healthy one with the fewest requests
outstanding. ``IMMEDIATE`` makes a send to a replica with no live connection
fail at once (then another replica is tried, or the model's result is
``unavailable``) instead of queueing behind a dead peer until the deadline;
zmq keeps reconnecting in the background, and the first pong after a leaf
restarts makes it healthy again.

A leaf with ``curve`` keys is reached over CURVE on its tcp endpoints. A
failed handshake never completes the connection, so sends fail at once as
above; the link's monitor says why in the log and in the root's pong, and a
link whose key or mechanism the leaf rejected (which libzmq does not retry)
is reconnected by hand every few seconds.
"""
from __future__ import annotations

import itertools
import logging
import time

import zmq

from _trim.curve import ClientKeys, LinkWatch, connect_all, secured
from _trim.protocol import pack_header

log = logging.getLogger("rootproc")

SEND_HWM = 100_000


class LeafLink:
    """One replica endpoint of a named leaf."""

    def __init__(self, ctx: zmq.Context, name: str, endpoint: str, models, compression: str,
                 curve: ClientKeys | None = None):
        self.name = name
        self.endpoint = endpoint
        self.configured = frozenset(models)
        self.reported: frozenset | None = None   # None until a pong lists the leaf's models
        self.hashes: dict = {}   # model version -> signature hash the leaf reports
        self.compression = compression
        self.outstanding = 0
        self.last_pong = float("-inf")
        self.pid = None
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.RCVHWM, SEND_HWM)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.curve = curve if curve is not None and secured(endpoint) else None
        self.watch = (LinkWatch(self.socket, f"leaf {name} ({endpoint})", self.curve.public)
                      if self.curve is not None else None)
        connect_all(self.socket, [endpoint], self.curve)

    @property
    def models(self) -> frozenset:
        # Once the leaf has said what it serves, only the versions it says are
        # ready: during a rollout the placement runs ahead of (or behind) the leaf.
        return self.configured if self.reported is None else self.reported

    def healthy(self, now: float, timeout_s: float) -> bool:
        return now - self.last_pong <= timeout_s

    def send(self, frames) -> bool:
        """False when the replica has no live connection or its queue is full."""
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def check_handshake(self, now: float) -> None:
        """Log handshake failures; reconnect when libzmq will not by itself."""
        if self.watch is None:
            return
        self.watch.poll(now)
        if self.watch.due(now):
            try:
                self.socket.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # already gone
            self.socket.connect(self.endpoint)

    def on_pong(self, header: dict, now: float) -> None:
        self.last_pong = now
        # A pong is foreign input (leaves may be written in any language): fields
        # of the wrong type are dropped, not used as pids or compared as hashes.
        pid = header.get("pid")
        usable = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 1 << 31
        self.pid = pid if usable else None
        models = header.get("models")
        if isinstance(models, list):
            ready = [m for m in models if isinstance(m, dict) and isinstance(m.get("model"), str)
                     and m.get("ready", True)]
            self.reported = frozenset(m["model"] for m in ready)
            self.hashes = {m["model"]: m.get("signature_hash") for m in ready
                           if isinstance(m.get("signature_hash"), str)}

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close(self.socket)
        self.socket.close(linger=0)


def load_curve(leaf) -> ClientKeys | None:
    """The CURVE client keys for a leaf's tcp endpoints (reads the key files)."""
    curve = getattr(leaf, "curve", None)
    if curve is None:
        return None
    return ClientKeys.load(curve.server_public_key, curve.client_secret_key,
                           f"root config: leaf {leaf.name!r}: curve")


class LeafPool:
    def __init__(self, ctx: zmq.Context, leaves, placement: dict, default_compression: str,
                 health_timeout_s: float):
        self.links: list[LeafLink] = []
        # Every key file is read before any socket exists: a bad one fails the start cleanly.
        keys = {leaf.name: load_curve(leaf) for leaf in leaves}
        for leaf in leaves:
            models = leaf.models or placement.get(leaf.name, ())
            for ep in leaf.endpoints:
                self.links.append(LeafLink(ctx, leaf.name, ep, models,
                                           leaf.compression or default_compression,
                                           keys[leaf.name]))
            if keys[leaf.name] is not None:
                log.info("leaf %s: CURVE on its tcp endpoints; this root's public key %s",
                         leaf.name, keys[leaf.name].public.decode("ascii"))
        self.by_socket = {link.socket: link for link in self.links}
        self.health_timeout_s = health_timeout_s
        self._ping_ids = itertools.count()

    def hosted(self) -> set[str]:
        out: set[str] = set()
        for link in self.links:
            out |= link.models
        return out

    def candidates(self, key: str, now: float) -> list[LeafLink]:
        """Replicas hosting ``key``, best first: healthy, then least outstanding."""
        links = [link for link in self.links if key in link.models]
        links.sort(key=lambda link: (not link.healthy(now, self.health_timeout_s), link.outstanding))
        return links

    def ping_all(self) -> None:
        now = time.monotonic()
        for link in self.links:
            link.check_handshake(now)
            link.send([pack_header({"type": "ping", "id": f"ping-{next(self._ping_ids)}"})])

    def status(self, now: float) -> list[dict]:
        out = []
        for l in self.links:
            entry = {"leaf": l.name, "endpoint": l.endpoint,
                     "healthy": l.healthy(now, self.health_timeout_s),
                     "outstanding": l.outstanding, "models": sorted(l.models), "pid": l.pid}
            if l.watch is not None:
                entry.update(curve=True, handshake_error=l.watch.problem)
            out.append(entry)
        return out

    def close(self) -> None:
        for link in self.links:
            link.close()


__all__ = ["LeafLink", "LeafPool"]
