"""Message envelopes shared by the client, the root and the leaves.

Every message is a ZeroMQ multipart message: frame 0 is a small JSON header
(orjson), the frames after it are raw payloads whose meaning the header
gives. `docs/protocol.md` is the normative description.
"""
from __future__ import annotations

import lz4.block
import numpy as np
import orjson

from ..errors import NotFound, StoreUnavailable, TrimmerError

PROTOCOL_VERSION = 1

# Header size limit: headers are small; a huge frame 0 is an attack or a bug.
MAX_HEADER_NBYTES = 64 * 1024

# Error kinds, as they appear in error replies and in metrics labels.
BAD_REQUEST = "bad_request"            # malformed frames or header fields
UNKNOWN_MODEL = "unknown_model"        # no such model version served / configured
DECODE_ERROR = "decode_error"          # batch frame failed validation
SIGNATURE_MISMATCH = "signature_mismatch"  # batch lacks or mistypes what the model reads
MODEL_ERROR = "model_error"            # the model raised
TOO_LARGE = "too_large"                # over a configured size or row limit
DEADLINE = "deadline"                  # no answer before the request's deadline
OVERLOADED = "overloaded"              # a leaf's queue for the model is full: shed at once
UNAVAILABLE = "unavailable"            # no healthy leaf serves the model
STORE_UNAVAILABLE = "store_unavailable"  # the feature store did not answer in time
SHUTTING_DOWN = "shutting_down"        # process is draining
LEAF_ERROR = "leaf_error"              # a leaf's reply the root cannot use, or its own bug
INTERNAL = "internal"                  # a bug in the process answering: logged with a traceback
ERROR_KINDS = (BAD_REQUEST, UNKNOWN_MODEL, DECODE_ERROR, SIGNATURE_MISMATCH, MODEL_ERROR,
               TOO_LARGE, DEADLINE, OVERLOADED, UNAVAILABLE, STORE_UNAVAILABLE, SHUTTING_DOWN,
               LEAF_ERROR, INTERNAL)

# How much of a value the sender chose an error message quotes: enough to
# recognise it, never enough to make a reply outgrow its header limit.
QUOTE_CHARS = 64

COMPRESSION_NONE = "none"
COMPRESSION_LZ4 = "lz4"

SCORES_DTYPE = np.dtype("<f4")
CANDIDATES_DTYPE = np.dtype("<i8")


class ProtocolError(TrimmerError, ValueError):
    """A message that cannot be served; ``kind`` is one of ERROR_KINDS."""

    def __init__(self, kind: str, message: str, **details):
        super().__init__(message)
        self.kind = kind
        self.details = details

    def to_error(self) -> dict:
        return {"kind": self.kind, "message": str(self), **self.details}


def pack_header(header: dict) -> bytes:
    return orjson.dumps({"v": PROTOCOL_VERSION, **header})


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """``value``, a JSON value someone else sent, as an error message may quote
    it: a string cut to ``limit`` characters, a number as it is, a list or an
    object described by its size (never walked: it may nest a thousand deep)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, list):
        return f"a list of {len(value)} entries"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return type(value).__name__


def load_header(frame) -> dict:
    """Frame 0 as a JSON object, not yet checked for ``v`` and ``type`` (a reply
    echoes the id of a header that fails those); ProtocolError(bad_request)."""
    raw = memoryview(frame)
    if raw.nbytes > MAX_HEADER_NBYTES:
        raise ProtocolError(BAD_REQUEST, f"header frame is {raw.nbytes} bytes, limit {MAX_HEADER_NBYTES}")
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        header = _strict_json(raw, exc)
    if not isinstance(header, dict):
        raise ProtocolError(BAD_REQUEST, "header frame must be a JSON object")
    return header


def _not_json(token: str):
    raise ValueError(f"{token} is not a JSON value")


def _strict_json(raw: memoryview, exc: Exception):
    """What orjson refused that is still JSON: a number beyond float64
    (``1e400``, read as infinity) or an integer beyond 64 bits, which the
    field checks then refuse by name, with the id echoed. ``NaN`` and
    ``Infinity`` are not JSON."""
    import json
    try:
        return json.loads(bytes(raw), parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise ProtocolError(BAD_REQUEST, f"header frame is not JSON: {exc}") from None


def check_header(header: dict) -> dict:
    """``header`` when its ``v`` is the integer 1 and its ``type`` a string;
    ProtocolError(bad_request) otherwise."""
    v = header.get("v")
    # Exactly the integer: JSON's 1.0 and true compare equal to 1 in Python.
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(BAD_REQUEST, f"unsupported protocol version {quote(v)} (this build "
                                         f"speaks the integer {PROTOCOL_VERSION})")
    if not isinstance(header.get("type"), str):
        raise ProtocolError(BAD_REQUEST, "header has no string 'type'")
    return header


def unpack_header(frame) -> dict:
    """Parse and check frame 0; ProtocolError(bad_request) naming what is wrong."""
    return check_header(load_header(frame))


def field(header: dict, name: str, kind: type | tuple, *, default=..., check=None):
    """A typed header field; ProtocolError(bad_request) naming the field when absent or wrong."""
    if name not in header:
        if default is ...:
            raise ProtocolError(BAD_REQUEST, f"header field {name!r} is missing")
        return default
    value = header[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(BAD_REQUEST, f"header field {name!r} has the wrong type (bool)")
    if not isinstance(value, kind):
        raise ProtocolError(BAD_REQUEST, f"header field {name!r} has the wrong type "
                                         f"({type(value).__name__})")
    if check is not None and not check(value):
        raise ProtocolError(BAD_REQUEST, f"header field {name!r} has an invalid value {quote(value)}")
    return value


def as_protocol_error(exc: TrimmerError) -> ProtocolError:
    """The wire form of an error raised below the code that replies: a
    missing thing is ``unknown_model``, a feature store that did not answer
    ``store_unavailable``, anything else the sender's ``bad_request`` (a
    malformed name, say)."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, StoreUnavailable):
        return ProtocolError(STORE_UNAVAILABLE, str(exc))
    if isinstance(exc, NotFound):
        return ProtocolError(UNKNOWN_MODEL, str(exc))
    return ProtocolError(BAD_REQUEST, str(exc))


def error_header(request_id, kind: str, message: str, **details) -> bytes:
    return pack_header({"type": "error", "id": request_id, "ok": False,
                        "error": {"kind": kind, "message": message, **details}})


def compress(payload) -> bytes:
    """LZ4 block compression; the raw size travels in the header, not the block."""
    return lz4.block.compress(payload, store_size=False)


def decompress(payload, raw_nbytes: int, limit: int, *, writable: bool = False) -> bytes:
    """Inverse of `compress`, refusing to inflate past ``limit`` bytes.

    ``writable`` returns a bytearray: arrays decoded on it are writable, so
    torch can wrap them without a read-only warning or a defensive copy."""
    if not isinstance(raw_nbytes, int) or isinstance(raw_nbytes, bool) or raw_nbytes < 0:
        raise ProtocolError(BAD_REQUEST, f"raw_nbytes must be a non-negative integer, got {raw_nbytes!r}")
    if raw_nbytes > limit:
        raise ProtocolError(TOO_LARGE, f"decompressed batch would be {raw_nbytes} bytes, limit {limit}")
    try:
        out = lz4.block.decompress(payload, uncompressed_size=raw_nbytes,
                                   return_bytearray=writable)
    except lz4.block.LZ4BlockError as exc:
        raise ProtocolError(DECODE_ERROR, f"LZ4 payload does not decompress: {exc}") from None
    if len(out) != raw_nbytes:
        raise ProtocolError(DECODE_ERROR, f"LZ4 payload decompressed to {len(out)} bytes, "
                                          f"header said {raw_nbytes}")
    return out


def scores_from_frame(frame, n_rows: int) -> np.ndarray:
    buf = memoryview(frame)
    if buf.nbytes != n_rows * SCORES_DTYPE.itemsize:
        raise ProtocolError(DECODE_ERROR, f"scores frame is {buf.nbytes} bytes, expected "
                                          f"{n_rows} float32 scores")
    return np.frombuffer(buf, dtype=SCORES_DTYPE)


def candidates_from_frame(frame, limit: int) -> np.ndarray:
    buf = memoryview(frame)
    if buf.nbytes % CANDIDATES_DTYPE.itemsize:
        raise ProtocolError(BAD_REQUEST, f"candidate frame is {buf.nbytes} bytes, "
                                         f"not a whole number of int64 ids")
    n = buf.nbytes // CANDIDATES_DTYPE.itemsize
    if n > limit:
        raise ProtocolError(TOO_LARGE, f"{n} candidates, limit {limit}")
    return np.frombuffer(buf, dtype=CANDIDATES_DTYPE)
