"""One model's batch as the message a leaf link carries.

The gather kernel copies the trim plan's byte ranges straight into what is
sent: a shared-memory slot when the link has a ring and a slot frees up in
time, else a fresh buffer that becomes the payload frame (LZ4-compressed when
the link says so). This module only encodes; which replica gets the message,
and what happens when it does not take it, is the router's business
(rootproc/router.py).

Each message carries the time left before the client's deadline
(``deadline_ms``), so that a leaf skips work nobody waits for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import _trim
from _trim import memory
from _trim.transport.protocol import COMPRESSION_LZ4, compress, pack_header

if TYPE_CHECKING:
    from rootproc.leaves.shm import ShmChannel


@dataclass(frozen=True)
class ModelBatch:
    """One model version's share of a request's batch: what a send, and any
    resend to another replica, encodes."""

    key: str           # model version
    plan: object       # trim plan: which columns of ``batch`` the model reads
    batch: object
    untrimmed: int     # bytes the message would take with every schema feature (for metrics)
    # The plan with the model's reads (sub-feature columns), for a leaf that
    # says it takes them (its pong's sub_feature_columns); None: none to send.
    fine: object = None
    nbytes: int = -1   # ``plan``'s message, the most any send takes: given when the sender computed it
    traceparent: str | None = None   # the root's send span, when tracing is on
    # The plan with the model's groups (grouped columns: a TorchRec model's KJT and
    # dense tensor), for a leaf that says it takes them (its pong's grouped_columns).
    grouped: object = None
    fine_nbytes: int = field(init=False)   # ``fine``'s message, or ``nbytes``
    grouped_nbytes: int = field(init=False)   # ``grouped``'s message, or ``nbytes``

    def __post_init__(self):
        if self.nbytes < 0:
            object.__setattr__(self, "nbytes", _trim.encoded_nbytes(self.plan, self.batch))
        object.__setattr__(self, "fine_nbytes", self.nbytes if self.fine is None
                           else _trim.encoded_nbytes(self.fine, self.batch))
        object.__setattr__(self, "grouped_nbytes", self.nbytes if self.grouped is None
                           else _trim.encoded_nbytes(self.grouped, self.batch))

    def for_link(self, link) -> tuple[object, int, str]:
        """(plan, message bytes, kind) of the message ``link``'s leaf gets: the
        groups, else the reads, only to a leaf that says it takes them (fail
        open); kind "grouped", "fine" or "" (the plain plan)."""
        limit = getattr(link, "max_message_bytes", None)   # a broadcast dense member may grow it
        if self.grouped is not None and getattr(link, "grouped_columns", False) and (
                limit is None or self.grouped_nbytes <= limit):
            return self.grouped, self.grouped_nbytes, "grouped"
        if self.fine is not None and getattr(link, "sub_feature_columns", False):
            return self.fine, self.fine_nbytes, "fine"
        return self.plan, self.nbytes, ""


@dataclass
class LeafMessage:
    """The frames of one score message, and what its sending owes the ring."""

    mid: str
    frames: list
    wire_nbytes: int             # payload bytes on the socket: 0 through shared memory
    channel: ShmChannel | None = None   # the ring's channel holding its slot, if it went through one
    nbytes: int = 0              # the batch message's bytes (before compression)
    fine: bool = False           # it carries the model's reads (sub-feature columns)
    grouped: bool = False        # it carries the model's groups (grouped columns)

    @property
    def in_shm(self) -> bool:
        return self.channel is not None

    def unsent(self) -> None:
        """The link refused it: nobody will read its slot."""
        if self.channel is not None:
            self.channel.unsent(self.mid)


class Encoder:
    """Encodes one `ModelBatch` for each replica tried in turn. The socket
    payload is encoded once and shared by those tries: zmq takes a buffer
    only when a send succeeds, and a link that refuses a message queued none
    of it."""

    def __init__(self, model: ModelBatch):
        self.model = model
        self._payloads: dict[str, np.ndarray] = {}   # by plan kind (for_link)

    def message(self, link, mid: str, rows: int, deadline_ms: int, channel=None,
                read_replies=None) -> LeafMessage:
        """``link``'s message ``mid``; through ``channel`` (the link's ring)
        when it has a slot within its wait, during which
        ``read_replies(timeout_s)`` reads the link's replies (only they
        free slots)."""
        model = self.model
        plan, nbytes, kind = model.for_link(link)
        fine, grouped = kind == "fine", kind == "grouped"
        head = {"type": "score", "id": mid, "model": model.key, "rows": rows,
                "compression": link.compression, "deadline_ms": deadline_ms}
        if model.traceparent is not None:
            head["traceparent"] = model.traceparent
        if channel is not None:
            desc = channel.place(mid, plan, model.batch, nbytes, read_replies, what=model.key)
            if desc is not None:
                head.update(compression="none", shm=desc)
                return LeafMessage(mid, [pack_header(head)], 0, channel, nbytes, fine, grouped)
        if kind not in self._payloads:
            # Never written again once sent: zmq owns it until it has left
            # (copy=False), and the pool hands it out only after that.
            self._payloads[kind] = memory.empty(nbytes)
            _trim.encode_into(plan, model.batch, self._payloads[kind])
        payload: np.ndarray | bytes = self._payloads[kind]
        if link.compression == COMPRESSION_LZ4:
            block = compress(payload)
            limit = link.max_message_bytes
            # A block LZ4 made larger than the limit goes as it is: the leaf
            # would drop the frame, and the raw message fits (the router saw to it).
            if limit is None or len(block) <= limit:
                payload = block
                head["raw_nbytes"] = nbytes
            else:
                head["compression"] = "none"
        return LeafMessage(mid, [pack_header(head), payload], len(payload), None, nbytes, fine,
                           grouped)


__all__ = ["Encoder", "LeafMessage", "ModelBatch"]
