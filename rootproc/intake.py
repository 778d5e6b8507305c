"""Client requests as the root receives them: header checks, model names.

Everything a client sends is checked here before any work is done; each
problem is a `ProtocolError` naming what is wrong (quoting at most a short
piece of what was sent), so the client's one reply says what to fix and the
root keeps serving. A model name that no config or leaf knows is not a
problem of the request: it becomes that model's ``unknown_model`` result,
and the other models are scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from _trim.transport.envelope import usable_id
from _trim.transport.model_key import is_model_ref
from _trim.transport.protocol import (
    BAD_REQUEST,
    TOO_LARGE,
    UNKNOWN_MODEL,
    ProtocolError,
    candidates_from_frame,
    field,
    quote,
)
from rootproc.defaults import MAX_MODELS_PER_REQUEST
from rootproc.leaves.agreement import default_models, resolve, served_versions

_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class ScoreRequest:
    rid: str
    user: int
    models: list | None        # as the client named them; None: the config's default set
    deadline_ms: float
    candidates: np.ndarray     # int64 ids, a view on the received frame


def parse_score(header: dict, body: list, cfg) -> ScoreRequest:
    """A score request's fields, checked against the root config's limits.
    The caller has checked the envelope and that the id is usable."""
    rid = usable_id(header)
    if rid is None:
        raise ProtocolError(BAD_REQUEST, "header field 'id' is missing")
    if len(body) != 2:
        raise ProtocolError(BAD_REQUEST, f"score request has {len(body)} frames, expected 2 "
                                         "(header, candidate ids)")
    size = sum(len(f) for f in body)
    if size > cfg.max_request_nbytes:
        raise ProtocolError(TOO_LARGE, f"request is {size} bytes, limit {cfg.max_request_nbytes}")
    candidates = candidates_from_frame(body[1].buffer, cfg.max_candidates)
    user = field(header, "user", int)
    if not _INT64.min <= user <= _INT64.max:
        raise ProtocolError(BAD_REQUEST, f"header field 'user' is {user}, outside the signed "
                                         "64-bit range of entity ids")
    deadline_ms = cfg.deadline_ms if header.get("deadline_ms") is None else \
        field(header, "deadline_ms", (int, float), check=lambda d: d > 0)
    return ScoreRequest(rid, user, requested_models(header), min(deadline_ms, cfg.max_deadline_ms),
                        candidates)


def requested_models(header: dict) -> list | None:
    """The ``models`` field: None (absent or null: the default set) or 1 to
    MAX_MODELS_PER_REQUEST model names."""
    models = header.get("models")
    if models is None:
        return None
    if not isinstance(models, list):
        raise ProtocolError(BAD_REQUEST, f"header field 'models' must be a list of model names, "
                                         f"got {quote(models)}")
    if not models:
        raise ProtocolError(BAD_REQUEST, "header field 'models' is empty: name at least one "
                                         "model, or leave the field out for the default set")
    if len(models) > MAX_MODELS_PER_REQUEST:
        raise ProtocolError(TOO_LARGE, f"header field 'models' names {len(models)} models, "
                                       f"limit {MAX_MODELS_PER_REQUEST}")
    for i, name in enumerate(models):
        if not is_model_ref(name):
            raise ProtocolError(BAD_REQUEST, f"models[{i}] is {quote(name)}, not a model name "
                                             "(NAME or NAME@VERSION: letters, digits, '_', '-', "
                                             "'.', at most 128 each, starting with a letter or "
                                             "digit)")
    return models


def resolve_models(active, pool, requested, now: float) -> list[tuple[str, bool]]:
    """What a request scores, in the order it named them: (version, True) for
    each version once, (the name as sent, False) for each name that neither
    the config nor a leaf knows."""
    served = served_versions(pool, now)
    if requested is None:
        keys = default_models(active, served)
        if not keys:
            raise ProtocolError(UNKNOWN_MODEL, "the active config has no model to score with")
        if len(keys) > MAX_MODELS_PER_REQUEST:
            raise ProtocolError(TOO_LARGE, f"the default set has {len(keys)} model versions, "
                                           f"limit {MAX_MODELS_PER_REQUEST} per request: name "
                                           "the models in 'models'")
        return [(key, True) for key in keys]
    hosted = pool.hosted()
    out: list[tuple[str, bool]] = []
    for name in requested:
        if "@" in name:
            key = name if (name in active.models or name in hosted) else None
        else:
            key = resolve(active, name, served)
        entry = (name, False) if key is None else (key, True)
        if entry not in out:
            out.append(entry)
    return out


def unknown_model_error(name: str) -> dict:
    what = f"model version {quote(name)}" if "@" in name else f"model {quote(name)}"
    return {"kind": UNKNOWN_MODEL, "message": f"{what} is neither in the active config nor "
                                               "served by a leaf"}


__all__ = ["ScoreRequest", "parse_score", "requested_models", "resolve_models",
           "unknown_model_error"]
