"""Client requests as the root receives them: envelope, header checks, model names.

Everything a client sends is checked here before any work is done; each
problem is a `ProtocolError` naming what is wrong, so the client's one reply
says what to fix and the root keeps serving.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from _trim.transport.envelope import MAX_ID_CHARS
from _trim.transport.protocol import (
    BAD_REQUEST,
    TOO_LARGE,
    UNKNOWN_MODEL,
    ProtocolError,
    candidates_from_frame,
    field,
)

from .agreement import default_models, resolve, served_versions

_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class ScoreRequest:
    rid: str
    user: int
    models: list | None        # as the client named them; None: the config's default set
    deadline_ms: float
    candidates: np.ndarray     # int64 ids, a view on the received frame


def parse_score(header: dict, body: list, cfg) -> ScoreRequest:
    """A score request's fields, checked against the root config's limits."""
    rid = field(header, "id", str, check=lambda s: 0 < len(s) <= MAX_ID_CHARS)
    user = field(header, "user", int, check=lambda u: _INT64.min <= u <= _INT64.max)
    requested = field(header, "models", list, default=None,
                      check=lambda m: all(isinstance(x, str) and x for x in m))
    deadline_ms = field(header, "deadline_ms", (int, float), default=cfg.deadline_ms,
                        check=lambda d: d > 0)
    deadline_ms = min(deadline_ms, cfg.max_deadline_ms)
    if len(body) != 2:
        raise ProtocolError(BAD_REQUEST, f"score request has {len(body)} frames, expected 2 "
                                         "(header, candidate ids)")
    size = sum(len(f) for f in body)
    if size > cfg.max_request_nbytes:
        raise ProtocolError(TOO_LARGE, f"request is {size} bytes, limit {cfg.max_request_nbytes}")
    candidates = candidates_from_frame(body[1].buffer, cfg.max_candidates)
    return ScoreRequest(rid, user, requested, deadline_ms, candidates)


def resolve_models(active, pool, requested, now: float) -> list[str]:
    """The model versions a request scores with, each once; UNKNOWN_MODEL
    naming every requested name that neither the config nor a leaf knows."""
    served = served_versions(pool, now)
    if requested is None:
        keys = default_models(active, served)
        if not keys:
            raise ProtocolError(UNKNOWN_MODEL, "the active config has no model to score with")
        return keys
    hosted = pool.hosted()
    keys, unknown = [], []
    for name in requested:
        if "@" in name:
            key = name if (name in active.models or name in hosted) else None
        else:
            key = resolve(active, name, served)
        if key is None:
            unknown.append(name)
        elif key not in keys:
            keys.append(key)
    if unknown:
        raise ProtocolError(UNKNOWN_MODEL, f"no such model version served: {', '.join(unknown)}",
                            unknown=unknown)
    return keys


__all__ = ["ScoreRequest", "parse_score", "resolve_models"]
