"""The asyncio scoring client: ``await client.score(...)``, many at once.

    client = AsyncScoringClient(["tcp://root-a:5550"], timeout_ms=2000)
    result = await client.score(user=42, candidates=ids, models=["ctr@3"])

One DEALER, as `ScoringClient`; one reader task matches replies to the
waiting calls by request id. With one endpoint it also watches the
connection (rule ``client.connection-lost``): when it drops, the replies it
carried are read first, then every call still waiting is answered
`unavailable` by the client itself, and a call made while the connection is
down and not back is not sent and answered so at once. A reply that still
comes for a call answered that way finds no waiter and is dropped.
"""
from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio

from rootproc.client.connection import connect_dealer, curve_keys
from rootproc.client.scoring_client import (
    DEFAULT_TIMEOUT_MS,
    LOST,
    NOT_SENT,
    RequestIds,
    ScoreResult,
    answered_here,
    build_request,
    parse_reply,
)


class AsyncScoringClient:
    """asyncio variant of `ScoringClient`; ``score`` may run concurrently."""

    def __init__(self, endpoints, *, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 curve_server_public_key=None, curve_client_secret_key=None):
        self.ctx = zmq.asyncio.Context.instance()
        keys = curve_keys(curve_server_public_key, curve_client_secret_key)
        self.endpoints, self.socket, self.handshakes = connect_dealer(self.ctx, endpoints, keys,
                                                                      watch=True)
        # The monitor socket is owned (and closed) here; the log reads its
        # events without blocking through a synchronous view of it, as it
        # reads the synchronous client's.
        self._monitor = self.handshakes.monitor
        if self._monitor is not None:
            self.handshakes.monitor = zmq.Socket.shadow(self._monitor.underlying)
        self._replies: zmq.Socket = zmq.Socket.shadow(self.socket.underlying)   # non-blocking reads
        self.timeout_ms = timeout_ms
        self._ids = RequestIds()
        self._waiters: dict[str, tuple[asyncio.Future, float]] = {}   # id -> (reply, sent at)
        self._reader: asyncio.Task | None = None

    async def _read(self) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if self.socket in ready:
                self._take_replies()
            if self._monitor is not None and self._monitor in ready:
                self.handshakes.read()
                if self.handshakes.dropped:
                    # libzmq queues a connection's last replies before it
                    # reports the drop: those are answers, the rest is lost.
                    self._take_replies()
                    self._connection_lost()

    def _take_replies(self) -> None:
        """Every reply waiting on the socket, to its call (none: dropped)."""
        while True:
            try:
                frames = self._replies.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            t = time.perf_counter()
            res = parse_reply([f.buffer for f in frames])
            waiter = self._waiters.pop(res.id, None)
            if waiter is not None and not waiter[0].done():
                res.latency_s = t - waiter[1]
                waiter[0].set_result(res)

    def _connection_lost(self) -> None:
        self.handshakes.dropped = 0
        for rid in list(self._waiters):
            fut, sent = self._waiters.pop(rid)
            if not fut.done():
                fut.set_result(answered_here(rid, self.endpoints[0], LOST, sent))

    async def score(self, user: int, candidates, models=None, deadline_ms=None,
                    timeout_ms: int | None = None,
                    traceparent: str | None = None) -> ScoreResult:
        """Score and wait; TimeoutError if no reply within ``timeout_ms``
        (default: the deadline plus a second, or the client's timeout)."""
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        rid = self._ids.next()
        t0 = time.perf_counter()
        if self.handshakes.down:
            return answered_here(rid, self.endpoints[0], NOT_SENT, t0)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[rid] = (fut, t0)
        if timeout_ms is None:
            timeout_ms = deadline_ms + 1000 if deadline_ms else self.timeout_ms
        try:
            await self.socket.send_multipart(build_request(rid, user, candidates, models,
                                                           deadline_ms, traceparent))
            return await asyncio.wait_for(fut, timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no reply to request {rid} within {timeout_ms} ms from "
                               f"{', '.join(self.endpoints)}{self.handshakes.hint()}") from None
        finally:
            self._waiters.pop(rid, None)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._monitor is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
        self.socket.close(linger=0)


__all__ = ["AsyncScoringClient"]
