"""A Redis round trip bounded as a whole: in time and in bytes.

redis-py's timeouts bound each socket read, so a server that trickles its
reply (a few bytes every few ms) keeps a reader waiting for ever; and a
value is read whole however large. `read_replies` reads a pipeline's
replies with hiredis (the C parser) from the socket itself, giving up at
``deadline`` or once more than ``max_bytes`` came, however the bytes arrive.

`READ_SCRIPT` is how a root reads records (one ``EVAL_RO``, a read-only script: Redis 7 or later): it
answers ``-1`` when the store's metadata key is gone (its data was flushed or
lost), else the store's generation followed by one entry per key: the value,
nil when absent, its length (an integer) when over the size limit (the value
is never sent), or ``-1`` when the key is not a string.
"""
from __future__ import annotations

import time

import hiredis
import redis

READ_SCRIPT = """\
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local out = {redis.call('GET', KEYS[2])}
local max = tonumber(ARGV[1])
for i = 3, #KEYS do
  local n = redis.pcall('STRLEN', KEYS[i])
  if type(n) ~= 'number' then out[i - 1] = -1
  elseif n > max then out[i - 1] = n
  else out[i - 1] = redis.call('GET', KEYS[i]) end
end
return out
"""
# Bytes a reply may take around each value (headers, the generation, ...).
OVERHEAD_NBYTES = 64
RECV_NBYTES = 1 << 18


def read_replies(conn, count: int, deadline: float, max_bytes: int | None) -> list:
    """``count`` replies from redis-py connection ``conn``'s socket by
    ``deadline`` (time.monotonic); redis.TimeoutError, ConnectionError,
    ResponseError (an error reply, or more than ``max_bytes``)."""
    sock = conn._sock
    if sock is None:
        raise redis.ConnectionError("not connected")
    reader = hiredis.Reader()
    replies: list = []
    got = 0
    try:
        while True:
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    break
                replies.append(reply)
            if len(replies) == count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise redis.TimeoutError(f"the reply was not complete in time ({got} bytes came)")
            sock.settimeout(left)
            try:
                data = sock.recv(RECV_NBYTES)
            except TimeoutError:
                raise redis.TimeoutError(f"the reply was not complete in time ({got} bytes "
                                         "came)") from None
            if not data:
                raise redis.ConnectionError("the server closed the connection")
            got += len(data)
            if max_bytes is not None and got > max_bytes:
                raise redis.ResponseError(f"a reply over {max_bytes} bytes (refused unread)")
            reader.feed(data)
    except hiredis.ProtocolError as exc:
        raise redis.ResponseError(f"not a Redis reply: {exc}") from None
    finally:
        sock.settimeout(conn.socket_timeout)
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
    return replies


__all__ = ["OVERHEAD_NBYTES", "READ_SCRIPT", "read_replies"]
