"""What a leaf says it accepts, and the root's answer to a message larger.

A leaf's pong may carry ``max_message_bytes``: the largest batch message it
takes, as a frame, decompressed (LZ4) or in a shared-memory slot (rule
``pong.max-message-bytes`` in docs/protocol.md). A leaf drops the
connection of a peer that sends a larger frame, so nothing would ever
answer such a request: the root sends a replica no message larger than it
advertised, and when no replica of a model takes the message, that model's
result is ``too_large`` at once, naming the limit and the size, counted
(``trimmer_root_too_large_total{leaf,model}``) and, as every failure the
root makes itself, logged by the router (rootproc/router.py, reason
``over_leaf_limit``). A leaf that advertises nothing (an older one) is sent
any size, as before.
"""
from __future__ import annotations

from _trim.transport.protocol import TOO_LARGE

MAX_LIMIT = (1 << 63) - 1


def message_limit(pong: dict) -> int | None:
    """The pong's ``max_message_bytes`` when it is an integer from 1 to
    2⁶³ − 1 (foreign input: anything else is no limit at all)."""
    value = pong.get("max_message_bytes")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_LIMIT:
        return value
    return None


def fits(link, nbytes: int) -> bool:
    """Whether ``link``'s leaf takes a batch message of ``nbytes``."""
    limit = link.max_message_bytes
    return limit is None or nbytes <= limit


class SizeGate:
    """The replicas a model's message may go to, by size, and the
    ``too_large`` result when it fits none (counted)."""

    def __init__(self, counter=None):
        self.counter = counter      # trimmer_root_too_large_total{leaf,model}, or None

    def fitting(self, links, nbytes: int) -> list:
        return [link for link in links if fits(link, nbytes)]

    def too_large(self, key: str, nbytes: int, links) -> dict:
        """The error of a message for ``key`` that none of ``links`` takes."""
        link = max(links, key=lambda link: link.max_message_bytes)
        limit = link.max_message_bytes
        if self.counter is not None:
            self.counter.labels(link.name, key).inc()
        return {"kind": TOO_LARGE,
                "message": f"the batch message of {key} is {nbytes} bytes, above the {limit} "
                           f"bytes leaf {link.name} accepts (its max_message_bytes): "
                           f"send fewer candidates",
                "limit": limit, "nbytes": nbytes, "leaf": link.name}


__all__ = ["MAX_LIMIT", "SizeGate", "fits", "message_limit"]
