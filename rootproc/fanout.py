"""Sending one model's batch of a request to a leaf replica.

The gather kernel copies the trim plan's byte ranges straight into what is
sent: a shared-memory slot when the link has a ring and a slot frees up in
time, else a fresh buffer that becomes the payload frame (LZ4-compressed when
the link says so). Replicas are tried best first; when none takes the
message the model's result is ``unavailable`` at once rather than a
``deadline`` later.

Each leaf request carries the time left before the client's deadline
(``deadline_ms``), so that a leaf skips work nobody waits for. A leaf whose
queue for the model is full answers ``overloaded`` at once; when the model
has another replica and time remains, the batch goes there instead (`retry`),
once per replica. Only models with several replicas keep their batch for that
until the request is answered.
"""
from __future__ import annotations

import time

import numpy as np

import _trim
from _trim.transport.protocol import COMPRESSION_LZ4, UNAVAILABLE, compress, pack_header

from .pending import Pending, PendingRequests


class FanOut:
    def __init__(self, pool, shm, metrics, pending: PendingRequests, pump):
        self.pool = pool
        self.shm = shm
        self.metrics = metrics
        self.pending = pending
        self.pump = pump   # pump(link, timeout_s): read the link's replies while waiting for a slot
        self._seq = 0
        pending.resend = self.retry

    def send(self, pending: Pending, idx: int, key: str, plan, batch, untrimmed: int,
             now: float) -> None:
        """Send result ``idx`` (model version ``key``) of ``pending``, or set its error."""
        result = pending.results[idx]
        links = self.pool.candidates(key, now)
        if not links:
            result["error"] = {"kind": UNAVAILABLE, "message": f"no leaf hosts {key}"}
            return
        if len(links) > 1:
            pending.retry[idx] = (key, plan, batch, untrimmed, set())
        if not self._send(pending, idx, key, plan, batch, untrimmed, links, shm_ok=True):
            result["error"] = {"kind": UNAVAILABLE, "message": f"no leaf replica of {key} is "
                               f"connected (tried {', '.join(l.endpoint for l in links)})"}

    def retry(self, pending: Pending, idx: int, refused) -> bool:
        """Send result ``idx`` again, to a replica other than ``refused`` (the
        link that answered ``overloaded``) and any tried before; False when
        there is none or no time left, and the leaf's error stands."""
        entry = pending.retry.get(idx)
        now = time.monotonic()
        if entry is None or now >= pending.deadline:
            return False
        key, plan, batch, untrimmed, tried = entry
        tried.add(refused)
        links = [l for l in self.pool.candidates(key, now) if l not in tried]
        # No shared memory: this runs while a reply is being handled, possibly
        # inside another send's wait for a slot, which must not be re-entered.
        if not links or not self._send(pending, idx, key, plan, batch, untrimmed, links,
                                       shm_ok=False):
            return False
        self.metrics.leaf_retries.labels(refused.name, key).inc()
        return True

    def _send(self, pending: Pending, idx: int, key: str, plan, batch, untrimmed: int,
              links, shm_ok: bool) -> bool:
        result = pending.results[idx]
        nbytes = _trim.encoded_nbytes(plan, batch)
        buf = None
        for link in links:
            self._seq += 1
            mid = f"{self._seq:x}"
            # Whole milliseconds, rounded down: the leaf counts from receipt, later than now.
            left_ms = max(0, int((pending.deadline - time.monotonic()) * 1000))
            head = {"type": "score", "id": mid, "model": key, "rows": pending.n,
                    "compression": link.compression, "deadline_ms": left_ms}
            channel = self.shm.channel(link) if shm_ok else None
            desc = None
            if channel is not None:
                desc = channel.place(mid, plan, batch, nbytes,
                                     lambda t, l=link: self.pump(l, t))
            if desc is not None:
                head.update(compression="none", shm=desc)
                frames, payload = [pack_header(head)], b""
            else:
                if buf is None:
                    # A fresh buffer per message: zmq owns it until sent (copy=False).
                    buf = np.empty(nbytes, dtype=np.uint8)
                    _trim.encode_into(plan, batch, buf)
                payload = buf
                if link.compression == COMPRESSION_LZ4:
                    payload = compress(buf)
                    head["raw_nbytes"] = nbytes
                frames = [pack_header(head), payload]
            if not link.send(frames):
                if desc is not None:
                    channel.unsent(mid)
                continue
            if desc is not None:
                self.shm.sent(link)
                result["transport"] = "shm"
            else:
                result.pop("transport", None)   # a retry may follow a shm send
            self.pending.sent(pending, idx, mid, link)
            result.update(leaf=link.name, bytes_sent=nbytes)
            wire = len(payload)  # 0 through shared memory: no payload on the socket
            self.metrics.bytes_sent.labels(link.name, key).inc(nbytes)
            self.metrics.bytes_untrimmed.labels(link.name, key).inc(untrimmed)
            self.metrics.wire_bytes.labels(link.name, key).inc(wire)
            if wire != nbytes and desc is None:
                result["wire_bytes"] = wire
            else:
                result.pop("wire_bytes", None)
            return True
        return False


__all__ = ["FanOut"]
