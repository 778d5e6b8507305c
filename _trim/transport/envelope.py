"""ZeroMQ routing envelopes and request ids, the same for the root and the leaf.

A ROUTER socket prefixes each message with the sender's identity frame; a
REQ sender also puts an empty delimiter frame after it, and a DEALER may do
the same. An empty frame right after the identity is always taken as that
delimiter (never as a header), and the reply goes back with the same
envelope.
"""
from __future__ import annotations

MAX_ID_CHARS = 128


def split_envelope(frames: list) -> tuple[list, list]:
    """(routing envelope, body) of a message read from a ROUTER socket."""
    split = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
    return frames[:split], frames[split:]


def usable_id(header: dict) -> str | None:
    """The request id a reply may echo: the sender's, when it is a string of
    1 to MAX_ID_CHARS characters; None otherwise."""
    rid = header.get("id")
    return rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS else None


def id_problem(header: dict, required: bool) -> str | None:
    """Why ``header``'s id cannot be used (present but unusable, or absent
    when ``required``); None when it is fine."""
    if "id" not in header or header["id"] is None:
        return "header field 'id' is missing" if required else None
    if usable_id(header) is None:
        return f"header field 'id' must be a string of 1 to {MAX_ID_CHARS} characters"
    return None


__all__ = ["MAX_ID_CHARS", "id_problem", "split_envelope", "usable_id"]
