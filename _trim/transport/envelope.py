"""ZeroMQ routing envelopes and request ids, the same for the root and the leaf.

A ROUTER socket prefixes each message with the sender's identity frame; a
REQ sender also puts an empty delimiter frame after it, a DEALER does not.
The reply goes back with the same envelope.
"""
from __future__ import annotations

MAX_ID_CHARS = 128


def split_envelope(frames: list) -> tuple[list, list]:
    """(routing envelope, body) of a message read from a ROUTER socket."""
    split = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
    return frames[:split], frames[split:]


def usable_id(header: dict) -> str | None:
    """The request id a reply may echo: the sender's, when it is a string of
    at most MAX_ID_CHARS characters; None otherwise."""
    rid = header.get("id")
    return rid if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS else None


__all__ = ["MAX_ID_CHARS", "split_envelope", "usable_id"]
