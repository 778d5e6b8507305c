"""A Redis round trip bounded as a whole: in time, in bytes, and per value.

redis-py's timeouts bound each socket read, so a server that trickles its
reply (a few bytes every few ms) keeps a reader waiting for ever; and a
value is read whole however large. `read_replies` reads a pipeline's
replies with hiredis (the C parser) from the socket itself, giving up at
``deadline`` or once more than ``max_bytes`` came, however the bytes arrive,
and raising `ValueTooLarge` as soon as the value being read has more than
``max_pending`` bytes (hiredis holds an unfinished value in its buffer:
its length is the part read so far), without reading the rest.
"""
from __future__ import annotations

import time

import hiredis
import redis

# Bytes a reply may take around each value (its header, the generation, ...).
OVERHEAD_NBYTES = 64
RECV_NBYTES = 1 << 18   # read into a buffer kept with the connection: no allocation per read


class ValueTooLarge(Exception):
    """A value in the reply is over the limit; the connection must be dropped."""


def read_replies(conn, count: int, deadline: float, max_bytes: int | None,
                 max_pending: int | None = None) -> list:
    """``count`` replies from redis-py connection ``conn``'s socket by
    ``deadline`` (time.monotonic); redis.TimeoutError, ConnectionError,
    ResponseError (an error reply, or more than ``max_bytes``), ValueTooLarge."""
    sock = conn._sock
    if sock is None:
        raise redis.ConnectionError("not connected")
    reader = hiredis.Reader()
    replies: list = []
    got = 0
    buf = getattr(conn, "_trimmer_buf", None)
    if buf is None:
        buf = conn._trimmer_buf = bytearray(RECV_NBYTES)
    try:
        while True:
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    break
                replies.append(reply)
            if len(replies) == count:
                break
            if max_pending is not None and reader.len() > max_pending:
                raise ValueTooLarge(f"a value over {max_pending} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise redis.TimeoutError(f"the reply was not complete in time ({got} bytes came)")
            sock.settimeout(left)
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                raise redis.TimeoutError(f"the reply was not complete in time ({got} bytes "
                                         "came)") from None
            if not n:
                raise redis.ConnectionError("the server closed the connection")
            got += n
            if max_bytes is not None and got > max_bytes:
                raise redis.ResponseError(f"a reply over {max_bytes} bytes (refused unread)")
            reader.feed(buf, 0, n)  # type: ignore[arg-type]
    except hiredis.ProtocolError as exc:
        raise redis.ResponseError(f"not a Redis reply: {exc}") from None
    finally:
        sock.settimeout(conn.socket_timeout)
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
    return replies


__all__ = ["OVERHEAD_NBYTES", "ValueTooLarge", "read_replies"]
