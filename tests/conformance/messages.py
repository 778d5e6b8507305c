"""Messages the conformance cases send, and what their replies must hold."""
from __future__ import annotations

import numpy as np
import orjson

from tests.root.world import (
    CANDIDATE_IDS,
    MODELS,
    SCHEMA,
    USER_IDS,
    direct,
    expected_features,
    message_nbytes,
)

from .harness import ABSENT, Pred

CANDS = CANDIDATE_IDS[:16]
N = len(CANDS)
USER = int(USER_IDS[0])
DEFAULT_SET = ["ctr@3", "div@2", "eng@1"]   # the bundle's current versions, sorted
ALL_FEATURES = [f["name"] for f in SCHEMA["features"]]


OMIT = object()   # a field left out of a header


def hdr(**fields) -> bytes:
    """A header frame: ``v`` 1 unless given; fields given as OMIT are left out."""
    head = {"v": 1, **fields}
    return orjson.dumps({k: v for k, v in head.items() if v is not OMIT})


def ids(values=CANDS) -> bytes:
    return np.asarray(values, dtype="<i8").tobytes()


def score(rid="r1", cands=CANDS, **fields) -> list:
    """A client score request: [header, candidate ids]."""
    return [hdr(**{"type": "score", "id": rid, "user": USER, **fields}), ids(cands)]


def scores(rid, results, n=N) -> dict:
    """The documented scores reply header."""
    return {"v": 1, "type": "scores", "id": rid, "ok": True, "n": n, "results": results,
            "timing_us": {k: Pred(lambda t: isinstance(t, int) and t >= 0, "a count of us")
                          for k in ("fetch", "preprocess", "trim", "leaves", "total")},
            "root": "root-c"}


def ok(model, frame, **fields) -> dict:
    return {"model": model, "ok": True, "frame": frame, "error": ABSENT, **fields}


def failed(model, kind, message=None, **fields) -> dict:
    from .harness import Re
    err = {"kind": kind, "message": Re(message) if message else Pred(bool, "a message")}
    err.update(fields.pop("error", {}))
    return {"model": model, "ok": False, "error": err, "frame": ABSENT, **fields}


def expected_scores(world, key: str, cands=CANDS, user=USER) -> np.ndarray:
    """What model ``key`` scores these candidates: the real models run
    directly; div@2, served by the scripted leaf, is its pin_ctr_raw feature."""
    feats = expected_features(world["users"], world["cands"], user, cands)
    if key == "div@2":
        return feats["pin_ctr_raw"]
    return direct(world, key, feats, len(cands))


def scores_are(*keys):
    """A `Case.frames` check: one frame per key, each that model's scores."""
    def check(ctx, header, frames):
        assert len(frames) == len(keys), f"{len(frames)} frames for {keys}"
        by_model = {r["model"]: r for r in header["results"]}
        for key in keys:
            got = np.frombuffer(frames[by_model[key]["frame"] - 1], dtype="<f4")
            np.testing.assert_allclose(got, expected_scores(ctx.world, key), rtol=1e-5,
                                       atol=1e-4, err_msg=key)
    return check


def trimmed_nbytes(world, key: str, cands=CANDS, user=USER, names=None) -> int:
    """The documented size of ``key``'s message (every feature with ``names=ALL``)."""
    feats = expected_features(world["users"], world["cands"], user, cands)
    names = names or [n for n in ALL_FEATURES if n in MODELS.get(key, MODELS["ctr@3"])]
    return message_nbytes(names, len(cands), feats)
