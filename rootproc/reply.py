"""What the root writes back to a client: per-model results merged into one reply.

A leaf's reply fills one model's result (`read_leaf_reply`); once every
model has its result, or the deadline has passed, `scores_reply` merges them
into the request's single ``scores`` reply, each model's scores as a frame
of its own. An error met while serving is written in its wire form
(`wire_error`): a `TrimmerError` has a kind, anything else is a root bug,
``internal``, and logged with its traceback.
"""
from __future__ import annotations

import logging
import time
import traceback

import orjson

from _trim.errors import TrimmerError
from _trim.transport.protocol import INTERNAL, ProtocolError, as_protocol_error, pack_header

log = logging.getLogger("rootproc")


def wire_error(exc: BaseException, context: str) -> ProtocolError:
    """``exc`` as the client is told it. Call it in the ``except`` block: a
    bug's traceback is logged, prefixed with ``context``."""
    if isinstance(exc, TrimmerError):
        return as_protocol_error(exc)
    log.error("%s: internal error\n%s", context, traceback.format_exc())
    return ProtocolError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def read_leaf_reply(header: dict, frames, rows: int, leaf: str) -> tuple[object, dict | None]:
    """(scores frame, None) for a usable scores reply, else (None, the error
    the model's result gets)."""
    if header.get("ok") and header["type"] == "scores":
        if len(frames) == 2 and len(frames[1]) == 4 * rows:
            return frames[1], None
        return None, {"kind": INTERNAL, "message": f"leaf {leaf} returned "
                      f"{len(frames[1]) if len(frames) > 1 else 0} score bytes for "
                      f"{rows} candidates"}
    return None, forwardable_error(header.get("error"), leaf)


def forwardable_error(err, leaf: str) -> dict:
    """A leaf's error as the client gets it, or the root's own ``internal``
    error when it is malformed or would not encode where it goes: the client's
    reply nests it three levels deep, and orjson refuses deep nesting."""
    if (isinstance(err, dict) and isinstance(err.get("kind"), str)
            and isinstance(err.get("message", ""), str)):
        try:
            orjson.dumps([[[err]]])
            return err
        except TypeError:
            pass
    return {"kind": INTERNAL, "message": f"leaf {leaf} sent a malformed reply"}


def scores_reply(request, root_name: str, metrics) -> list:
    """The frames of ``request``'s one reply: every model's scores frame or
    error, in the order the models were sent; counts its outcome."""
    t_end = time.perf_counter()
    frames, results = [], []
    for idx, result in enumerate(request.results):
        if result["ok"]:
            frames.append(request.frames[idx])
            result["frame"] = len(frames)
            result.pop("error", None)
            metrics.model_results.labels(result["model"], "ok").inc()
        else:
            # Only a root bug leaves a result with neither scores nor an error.
            kind = result.setdefault("error", {"kind": INTERNAL, "message": "no result "
                                               "recorded (a root bug: see its log)"})["kind"]
            metrics.errors.labels(kind).inc()
            metrics.model_results.labels(result["model"], kind).inc()
        results.append(result)
    timing = {k: int(v * 1e6) for k, v in request.timing.items()}
    timing["leaves"] = int((t_end - request.t_sent) * 1e6)
    timing["total"] = int((t_end - request.t_start) * 1e6)
    metrics.latency.labels("total").observe(t_end - request.t_start)
    metrics.requests.labels("ok").inc()
    header = pack_header({"type": "scores", "id": request.rid, "ok": True, "n": request.n,
                          "results": results, "timing_us": timing, "root": root_name})
    return [header] + frames


__all__ = ["forwardable_error", "read_leaf_reply", "scores_reply", "wire_error"]
