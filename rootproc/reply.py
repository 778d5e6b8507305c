"""What the root writes back to a client: per-model results merged into one reply.

A leaf's reply fills one model's result (`read_leaf_reply`); once every
model has its result, or the deadline has passed, `scores_reply` merges them
into the request's single ``scores`` reply, each model's scores as a frame
of its own. An error met while serving is written in its wire form
(`wire_error`): a `TrimmerError` has a kind, anything else is a root bug,
``internal``, and logged with its traceback.

A leaf is foreign input (it may be written in any language): a reply the
root cannot use fails its model at once as ``leaf_error``, and an error a
leaf reports reaches the client bounded (`bounded_error`). Every reply
header fits the protocol's 64 KiB: when the results would not, the failed
ones are cut to their kind and a shortened message (`fit_header`).
"""
from __future__ import annotations

import logging
import time
import traceback

import numpy as np

from _trim.errors import TrimmerError
from _trim.transport.protocol import (
    ERROR_KINDS,
    INTERNAL,
    LEAF_ERROR,
    MAX_HEADER_NBYTES,
    PROTOCOL_VERSION,
    SCORES_DTYPE,
    ProtocolError,
    as_protocol_error,
    pack_header,
    quote,
)
from rootproc.defaults import ERROR_DETAIL_CHARS, ERROR_LIST_ENTRIES, ERROR_MESSAGE_CHARS

log = logging.getLogger("rootproc")

# The most bytes orjson writes for one character of a string (a control
# character becomes \u00XX): what a message cut to N characters may cost.
_BYTES_PER_CHAR = 6


def wire_error(exc: BaseException, context: str) -> ProtocolError:
    """``exc`` as the client is told it. Call it in the ``except`` block: a
    bug's traceback is logged, prefixed with ``context``."""
    if isinstance(exc, TrimmerError):
        return as_protocol_error(exc)
    log.error("%s: internal error\n%s", context, traceback.format_exc())
    return ProtocolError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def read_leaf_reply(header: dict, frames, rows: int, leaf: str):
    """(scores frame, None, count of non-finite scores) for a usable scores
    reply, else (None, the error the model's result gets, 0). ``header`` is a
    JSON object carrying the request's id, not checked further."""
    v, kind = header.get("v"), header.get("type")
    if type(v) is not int or v != PROTOCOL_VERSION:
        return None, leaf_error(f"leaf {leaf} replied with protocol version {quote(v)}"), 0
    if kind == "scores":
        if header.get("ok") is not True:
            return None, leaf_error(f"leaf {leaf} sent a scores reply without \"ok\": true"), 0
        if len(frames) != 2 or len(frames[1]) != SCORES_DTYPE.itemsize * rows:
            got = len(frames[1]) if len(frames) > 1 else 0
            return None, leaf_error(f"leaf {leaf} returned {len(frames) - 1} frame(s), "
                                    f"{got} score bytes, for {rows} candidates (expected one "
                                    f"frame of {SCORES_DTYPE.itemsize * rows})"), 0
        scores = np.frombuffer(frames[1], dtype=SCORES_DTYPE)
        return frames[1], None, rows - int(np.count_nonzero(np.isfinite(scores)))
    if kind == "error":
        return None, forwardable_error(header.get("error"), leaf), 0
    return None, leaf_error(f"leaf {leaf} replied {quote(kind)} to a score request "
                            "(expected 'scores' or 'error')"), 0


def leaf_error(message: str, **details) -> dict:
    return {"kind": LEAF_ERROR, "message": message, **details}


def forwardable_error(err, leaf: str) -> dict:
    """A leaf's error object as the client gets it: a documented kind as it
    is (`internal` excepted: that names a bug of the root answering), any
    other kind as ``leaf_error`` keeping the leaf's words; bounded."""
    if not isinstance(err, dict) or not isinstance(err.get("kind"), str):
        return leaf_error(f"leaf {leaf} sent an error reply without an error object naming "
                          "its kind")
    message = err.get("message")
    message = message if isinstance(message, str) else ""
    kind = err["kind"]
    if kind in ERROR_KINDS and kind != INTERNAL:
        return bounded_error({**err, "message": message})
    return bounded_error({**err, **leaf_error(f"leaf {leaf} reported {quote(kind)}: {message}"),
                          "leaf_kind": kind})


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(0, limit - 1)] + "…"


def bounded_error(err: dict) -> dict:
    """``err`` with at most ERROR_MESSAGE_CHARS of message, ERROR_DETAIL_CHARS
    per string detail and ERROR_LIST_ENTRIES per list (``<field>_omitted``
    counts the rest); details that are neither scalars nor lists of scalars
    are dropped (a leaf may nest them deeper than a reply can carry)."""
    out = {"kind": err["kind"], "message": _cut(err.get("message", ""), ERROR_MESSAGE_CHARS)}
    for key, value in err.items():
        if key in out or not isinstance(key, str):
            continue
        if _scalar(value):
            out[key] = _cut(value, ERROR_DETAIL_CHARS) if isinstance(value, str) else value
        elif isinstance(value, list) and all(_scalar(x) for x in value):
            out[key] = [_cut(x, ERROR_DETAIL_CHARS) if isinstance(x, str) else x
                        for x in value[:ERROR_LIST_ENTRIES]]
            if len(value) > ERROR_LIST_ENTRIES:
                out[f"{key}_omitted"] = len(value) - ERROR_LIST_ENTRIES
    return out


def fit_header(header: dict, errors: list[dict]) -> bytes:
    """``header`` packed within MAX_HEADER_NBYTES: as it is when it fits, else
    with each of ``errors`` (objects inside it) cut to its kind and an equal
    share of the room left for its message, marked ``"cut": true``."""
    packed = pack_header(header)
    if len(packed) <= MAX_HEADER_NBYTES or not errors:
        return packed
    messages = [err.get("message", "") for err in errors]
    for err in errors:
        kind = err["kind"]
        err.clear()
        err.update(kind=kind, message="", cut=True)
    spare = MAX_HEADER_NBYTES - len(pack_header(header))
    chars = max(0, spare // len(errors) // _BYTES_PER_CHAR)
    for err, message in zip(errors, messages):
        err["message"] = _cut(message, chars)
    packed = pack_header(header)
    if len(packed) > MAX_HEADER_NBYTES:   # only names from the root's own config are left
        log.error("reply header is %d bytes even with its errors cut (limit %d)", len(packed),
                  MAX_HEADER_NBYTES)
    return packed


def error_reply(request_id, error: ProtocolError) -> bytes:
    """The header of a request's ``error`` reply."""
    err = bounded_error(error.to_error())
    return fit_header({"type": "error", "id": request_id, "ok": False, "error": err}, [err])


def scores_reply(request, root_name: str, metrics) -> list:
    """The frames of ``request``'s one reply: every model's scores frame or
    error, in the order the models were named; counts its outcome."""
    t_end = time.perf_counter()
    frames, results, errors = [], [], []
    for idx, result in enumerate(request.results):
        if result["ok"]:
            frames.append(request.frames[idx])
            result["frame"] = len(frames)
            result.pop("error", None)
            metrics.model_results.labels(result["model"], "ok").inc()
        else:
            # Only a root bug leaves a result with neither scores nor an error.
            error = bounded_error(result.get("error") or {
                "kind": INTERNAL, "message": "no result recorded (a root bug: see its log)"})
            result["error"] = error
            errors.append(error)
            metrics.errors.labels(error["kind"]).inc()
            metrics.model_results.labels(result["model"], error["kind"]).inc()
        results.append(result)
    timing = {k: int(v * 1e6) for k, v in request.timing.items()}
    timing["leaves"] = int((t_end - request.t_sent) * 1e6)
    timing["total"] = int((t_end - request.t_start) * 1e6)
    metrics.latency.labels("total").observe(t_end - request.t_start)
    metrics.requests.labels("ok").inc()
    fields = {"type": "scores", "id": request.rid, "ok": True, "n": request.n,
              "results": results, "timing_us": timing, "root": root_name}
    if request.missing:
        fields["missing"] = request.missing
    return [fit_header(fields, errors)] + frames


__all__ = ["bounded_error", "error_reply", "fit_header", "forwardable_error", "leaf_error",
           "read_leaf_reply", "scores_reply", "wire_error"]
