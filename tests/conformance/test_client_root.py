"""Client ↔ root (docs/protocol.md, section 2): each case a message a client
sends to the real root and the reply the protocol documents for it."""
from __future__ import annotations

import math
import time

import numpy as np
import orjson
import pytest

from tests.root.world import CANDIDATE_IDS

from .conftest import DEADLINE_MS, MAX_MESSAGE_BYTES
from .harness import ABSENT, Case, Pred, case_id, covers, dealer, error, fuzz_cases, match, run, until
from .messages import (
    ALL_FEATURES,
    CANDS,
    DEFAULT_SET,
    OMIT,
    USER,
    N,
    failed,
    hdr,
    ids,
    ok,
    score,
    scores,
    scores_are,
    trimmed_nbytes,
)

pytestmark = pytest.mark.slow

LONG = "x" * 60_000
MAX_NAME = "n" * 128 + "@" + "v" * 128     # the longest model name the protocol allows
INT = Pred(lambda v: type(v) is int and v > 0, "a positive integer")


def nested(depth: int):
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def every_default(rid, n=N, **fields):
    return scores(rid, [ok(key, i + 1, **fields) for i, key in enumerate(DEFAULT_SET)], n=n)


def bad_request(rid, message=None):
    return error("bad_request", message, rid=rid)


# -- leaf-1 scripts (the fake leaf serving div@2) ----------------------------------------

def silent(ctx):
    ctx.fake.script(answer=lambda h, f: None)


def answers(kind, message="scripted", **details):
    def setup(ctx):
        ctx.fake.script(answer=lambda h, f: ctx.fake.error(h, kind, message, **details))
    return setup


def scores_with(values):
    def setup(ctx):
        ctx.fake.script(answer=lambda h, f: ctx.fake.scores(h, f, values))
    return setup


def serves_nothing(ctx):
    ctx.fake.script(pong=lambda h: ctx.fake.pong(h, models=[]))
    until("leaf-1 out of rotation", lambda: "div@2" not in ctx.routes("leaf-1"))


def leaf_saw_deadline(lo, hi):
    def check(ctx, header, frames):
        sent = [h for h, _ in ctx.fake.received()]
        assert sent and all(lo < h["deadline_ms"] <= hi for h in sent), sent
    return check


def nothing_sent(ctx, header, frames):
    assert ctx.fake.received() == [], "a request that needs no leaf reached one"


def bytes_sent(key, names=None):
    def check(ctx, header, frames):
        result = next(r for r in header["results"] if r["model"] == key)
        assert result["bytes_sent"] == trimmed_nbytes(ctx.world, key, names=names), result
    return check


def nothing_fetched_or_sent(ctx, header, frames):
    nothing_sent(ctx, header, frames)
    assert header["timing_us"]["fetch"] == 0, header["timing_us"]


def all_empty(ctx, header, frames):
    assert frames and all(f == b"" for f in frames), frames


def short_message(ctx, header, frames):
    assert len(header["error"]["message"]) < 300, header["error"]["message"]


CASES = [
    # -- frame 0 ---------------------------------------------------------------------------
    Case("envelope.json-object", "not JSON", [b"\xffnot json", ids()],
         bad_request(None, "not JSON")),
    Case("envelope.json-object", "a JSON array", [b'["r1", 1]', ids()],
         bad_request(None, "must be a JSON object")),
    Case("envelope.json-object", "a JSON string", [b'"score"', ids()],
         bad_request(None, "must be a JSON object")),
    Case("envelope.json-object", "nested deeper than 1024 levels",
         [b"[" * 1100 + b"]" * 1100, ids()], bad_request(None, "not JSON")),
    Case("envelope.header-limit", "frame 0 over 64 KiB, even with a usable id",
         [hdr(type="score", id="big", user=USER, pad="a" * 70_000), ids()],
         bad_request(None, "limit 65536")),
    Case("envelope.version", "v 2", score("v1", v=2), bad_request("v1", "version 2")),
    Case("envelope.version", "v 1.0", score("v2", v=1.0), bad_request("v2", "version 1.0")),
    Case("envelope.version", "v true", score("v3", v=True), bad_request("v3", "version True")),
    Case("envelope.version", "v \"1\"", score("v4", v="1"), bad_request("v4", "version '1'")),
    Case("envelope.version", "no v", score("v5", v=OMIT), bad_request("v5", "version None")),
    Case("envelope.type", "no type", [hdr(id="t1", user=USER), ids()],
         bad_request("t1", "no string 'type'")),
    Case("envelope.type", "a type that is not a string", [hdr(type=5, id="t2"), ids()],
         bad_request("t2", "no string 'type'")),
    Case("envelope.unknown-type", "type explode", [hdr(type="explode", id="t3")],
         bad_request("t3", "unknown request type 'explode'")),
    Case("error.quote", "a 60000-character type, quoted short",
         [hdr(type=LONG, id="t4")], bad_request("t4", "unknown request type 'xxx"),
         check=short_message),
    Case("envelope.unknown-fields", "fields the spec does not name are ignored",
         score("u1", extra={"a": [1, {"b": None}]}, zzz=5), every_default("u1"), frames=3),
    # -- ids -------------------------------------------------------------------------------
    Case("envelope.id", "a score without an id", score(OMIT), bad_request(None, "'id' is missing")),
    Case("envelope.id", "id null", score(None), bad_request(None, "'id' is missing")),
    Case("envelope.id", "an empty id", score(""), bad_request(None, "1 to 128 characters")),
    Case("envelope.id", "a 129-character id", score("i" * 129),
         bad_request(None, "1 to 128 characters")),
    Case("envelope.id", "an id that is a number", score(5), bad_request(None, "1 to 128")),
    Case("envelope.id", "128 characters are echoed", score("i" * 128), every_default("i" * 128)),
    Case("envelope.id", "characters, not bytes", score("é" * 128), every_default("é" * 128)),
    Case("envelope.id", "a ping may leave it out", [hdr(type="ping")],
         {"type": "pong", "id": None, "ok": True, "role": "root"}),
    Case("envelope.id", "a ping's unusable id is refused", [hdr(type="ping", id=7)],
         bad_request(None, "1 to 128")),
    Case("envelope.id-echo", "with an unsupported version", score("e1", v=2), bad_request("e1")),
    Case("envelope.id-echo", "with an unknown type", [hdr(type="nope", id="e2")], bad_request("e2")),
    Case("envelope.id-echo", "with a bad field", score("e3", user="42"), bad_request("e3", "'user'")),
    Case("envelope.id-echo", "with too many candidates", score("e4", cands=np.arange(2049)),
         error("too_large", rid="e4")),
    Case("envelope.id-echo", "not when frame 0 is no object", [b'["e5"]', ids()], bad_request(None)),
    # -- the routing envelope --------------------------------------------------------------
    Case("envelope.delimiter", "a REQ-style empty first frame comes back first",
         [b""] + score("d1"), every_default("d1")),
    Case("envelope.delimiter", "only the delimiter", [b""], bad_request(None, "no header frame")),
    Case("envelope.delimiter", "an empty frame is never a header", [b"", b"", ids()],
         bad_request(None, "not JSON")),
    Case("envelope.hard-cap", "a frame past 16 x max_request_nbytes: no reply, dropped",
         [hdr(type="score", id="cap", user=USER), b"\0" * (17 << 20)], None, timeout=1.5),
    Case("envelope.hard-cap", "the root serves the next connection", score("cap2"),
         every_default("cap2")),
    Case("envelope.frames-limit", "100,000 extra frames: the rest read and dropped, answered",
         score("m1") + [b""] * 100_000, bad_request("m1", "100002 frames.*past the 15th")),
    Case("envelope.frames-limit", "frames each under the hard cap, together over it",
         score("m2") + [b"\0" * (6 << 20)] * 3, error("too_large", "over 16777216 bytes",
                                                      rid="m2")),
    Case("envelope.frames-limit", "the root serves the same connection after them",
         score("m3"), every_default("m3")),
    Case("envelope.traceparent", "a W3C traceparent is served as any request",
         score("t1", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
         every_default("t1")),
    Case("envelope.traceparent", "one that does not parse is ignored, never an error",
         score("t2", traceparent="01-XYZ"), every_default("t2")),
    Case("envelope.traceparent", "nor one that is no string", score("t3", traceparent=7),
         every_default("t3")),
    # -- score request frames --------------------------------------------------------------
    Case("score.frames", "no candidate frame", score("f1")[:1],
         bad_request("f1", "1 frames, expected 2")),
    Case("score.frames", "an extra frame", score("f2") + [b"extra"],
         bad_request("f2", "3 frames, expected 2")),
    Case("score.candidates", "not whole int64 ids", [score("c1")[0], b"\x01" * 7],
         bad_request("c1", "not a whole number of int64")),
    Case("score.candidates", "max_candidates (2048) are served",
         score("c2", cands=np.resize(CANDIDATE_IDS, 2048)), every_default("c2", n=2048)),
    Case("score.candidates", "one more is too_large", score("c3", cands=np.arange(2049)),
         error("too_large", "2049 candidates, limit 2048", rid="c3")),
    Case("score.request-size", "frames over max_request_nbytes (1 MiB)",
         [score("s1")[0], b"\0" * (1 << 20)], error("too_large", "limit 1048576", rid="s1")),
    # -- user --------------------------------------------------------------------------------
    Case("score.user", "missing", score("p1", user=OMIT), bad_request("p1", "'user' is missing")),
    Case("score.user", "a string", score("p2", user="42"), bad_request("p2", "'user' has the wrong type")),
    Case("score.user", "true", score("p3", user=True), bad_request("p3", "'user' has the wrong type")),
    Case("score.user", "42.0", score("p4", user=42.0), bad_request("p4", "'user' has the wrong type")),
    Case("score.user", "2^63", score("p5", user=2**63), bad_request("p5", "outside the signed 64-bit")),
    Case("score.user", "2^64 - 1", score("p6", user=2**64 - 1), bad_request("p6", "outside")),
    Case("score.user", "2^64 (a JSON number past 64 bits reads as a float)",
         [b'{"v":1,"type":"score","id":"p7","user":18446744073709551616}', ids()],
         bad_request("p7", "'user' has the wrong type")),
    Case("score.user", "-2^63 is an id like any other", score("p8", user=-2**63),
         every_default("p8")),
    # -- models ----------------------------------------------------------------------------
    Case("score.models-default", "absent: every current version of the config",
         score("m0"), every_default("m0"), frames=scores_are(*DEFAULT_SET)),
    Case("score.models-default", "null: the same", score("m1", models=None), every_default("m1")),
    Case("score.models-form", "a string", score("m2", models="ctr@3"),
         bad_request("m2", "'models' must be a list")),
    Case("score.models-form", "an empty list", score("m3", models=[]),
         bad_request("m3", "'models' is empty")),
    Case("score.models-form", "an entry that is not a string", score("m4", models=["ctr@3", 5]),
         bad_request("m4", r"models\[1\] is 5, not a model name")),
    Case("score.models-form", "NAME@ without a version", score("m5", models=["ctr@"]),
         bad_request("m5", r"models\[0\] is 'ctr@'")),
    Case("score.models-form", "a character names never have", score("m6", models=["c tr"]),
         bad_request("m6", "not a model name")),
    Case("score.models-form", "a 129-character name", score("m7", models=["a" * 129]),
         bad_request("m7", "not a model name")),
    Case("score.models-form", "an entry nested 1000 deep",
         [score("m8", models=["MODELS"])[0].replace(b'["MODELS"]', b"[" * 1000 + b"]" * 1000),
          ids()],
         bad_request("m8", r"models\[0\] is a list of 1 entries")),
    Case("score.models-limit", "65 names", score("m9", models=[f"m{i}" for i in range(65)]),
         error("too_large", "names 65 models, limit 64", rid="m9")),
    Case("score.model-name", "NAME is the version a leaf serves", score("n1", models=["div", "ctr@3"]),
         scores("n1", [ok("div@2", 1), ok("ctr@3", 2)]), frames=scores_are("div@2", "ctr@3")),
    Case("score.models-once", "each version once, in the order first named",
         score("n2", models=["eng", "ctr", "ctr@3", "eng@1", "nosuch", "nosuch"]),
         scores("n2", [ok("eng@1", 1), ok("ctr@3", 2), failed("nosuch", "unknown_model")]),
         frames=scores_are("eng@1", "ctr@3")),
    Case("score.unknown-model", "an unknown name fails only its own result",
         score("n3", models=["ctr@3", "nosuch", "ctr@9", "div"]),
         scores("n3", [ok("ctr@3", 1), failed("nosuch", "unknown_model", "model 'nosuch'"),
                       failed("ctr@9", "unknown_model", "model version 'ctr@9'"), ok("div@2", 2)]),
         frames=scores_are("ctr@3", "div@2")),
    Case("score.unknown-model", "only unknown names: a scores reply, nothing sent",
         score("n4", models=["nosuch@1"]), scores("n4", [failed("nosuch@1", "unknown_model")]),
         frames=0, check=nothing_sent),
    Case("score.unavailable", "no replica routes the version: unavailable at once",
         score("n5", models=["ctr@3", "div@2"], deadline_ms=10_000),
         scores("n5", [ok("ctr@3", 1), failed("div@2", "unavailable", "no leaf replica serves")]),
         setup=serves_nothing, check=lambda c, h, f: nothing_sent(c, h, f)),
    # -- deadline_ms -------------------------------------------------------------------------
    Case("score.deadline", "0 is refused", score("q1", deadline_ms=0),
         bad_request("q1", "'deadline_ms' has an invalid value 0")),
    Case("score.deadline", "negative", score("q2", deadline_ms=-5), bad_request("q2", "'deadline_ms'")),
    Case("score.deadline", "a string", score("q3", deadline_ms="250"), bad_request("q3", "wrong type")),
    Case("score.deadline", "true", score("q4", deadline_ms=True), bad_request("q4", "wrong type")),
    Case("score.deadline", "a fraction of a millisecond counts", score("q5", deadline_ms=2500.5),
         every_default("q5")),
    Case("score.deadline", "absent: the root's deadline_ms, counted down to the leaf",
         score("q6", models=["div@2"]), scores("q6", [ok("div@2", 1)]),
         check=leaf_saw_deadline(DEADLINE_MS - 1000, DEADLINE_MS)),
    Case("score.deadline", "past max_deadline_ms: clamped to it", score("q7", models=["div@2"],
         deadline_ms=1e12), scores("q7", [ok("div@2", 1)]), check=leaf_saw_deadline(9000, 10_000)),
    Case("score.deadline-result", "a model not answered in time fails alone",
         score("q8", models=["ctr@3", "div@2"], deadline_ms=300),
         scores("q8", [ok("ctr@3", 1), failed("div@2", "deadline", "did not answer")]),
         setup=silent, frames=scores_are("ctr@3")),
    # -- candidates: none --------------------------------------------------------------------
    Case("score.empty", "no candidates: every model ok with an empty frame, nothing sent",
         score("z1", cands=[]), every_default("z1", n=0, leaf=ABSENT, trimmed=True),
         frames=all_empty, check=nothing_fetched_or_sent),
    Case("score.empty", "no candidates: an unknown name is still unknown",
         score("z2", cands=[], models=["ctr@3", "nosuch"]),
         scores("z2", [ok("ctr@3", 1, trimmed=True), failed("nosuch", "unknown_model")], n=0)),
    # -- the scores reply --------------------------------------------------------------------
    Case("score.reply", "each result: model, ok, frame, trimmed, leaf, bytes_sent",
         score("y1", models=["ctr@3", "div@2"]),
         scores("y1", [ok("ctr@3", 1, trimmed=True, leaf="leaf-0", bytes_sent=INT),
                       ok("div@2", 2, trimmed=True, leaf="leaf-1", bytes_sent=INT)]),
         frames=scores_are("ctr@3", "div@2")),
    Case("batch.size", "bytes_sent is the documented message size",
         score("y2", models=["eng@1"]), scores("y2", [ok("eng@1", 1, bytes_sent=INT)]),
         check=bytes_sent("eng@1")),
    Case("score.transport", "a batch through shared memory says so",
         score("y3", models=["ctr@3", "div@2"]),
         scores("y3", [ok("ctr@3", 1, transport="shm"), ok("div@2", 2, transport=ABSENT)])),
    Case("score.wire-bytes", "a compressed link adds wire_bytes",
         score("y3b", models=["ctr@3", "div@2"]),
         scores("y3b", [ok("ctr@3", 1, wire_bytes=ABSENT), ok("div@2", 2, wire_bytes=INT)]),
         check=lambda c, h, f: h["results"][1]["wire_bytes"] < h["results"][1]["bytes_sent"]),
    Case("score.trimmed", "a version the config lacks is sent every feature",
         score("y4", models=["ctr@4"]), scores("y4", [ok("ctr@4", 1, trimmed=False)]),
         check=bytes_sent("ctr@4", names=ALL_FEATURES)),
    Case("score.model-failure", "a leaf's error fails only its model, with the leaf's words",
         score("y5", models=["ctr@3", "div@2"]),
         scores("y5", [ok("ctr@3", 1), failed("div@2", "model_error", "^boom$", leaf="leaf-1",
                                              trimmed=True, bytes_sent=INT)]),
         setup=answers("model_error", "boom")),
    Case("score.nonfinite", "NaN and infinite scores pass, counted in the result",
         score("y6", models=["div@2"]),
         scores("y6", [ok("div@2", 1, nonfinite=2)]),
         setup=scores_with([math.nan, math.inf] + [0.5] * (len(CANDS) - 2)),
         frames=lambda c, h, f: np.testing.assert_array_equal(
             np.frombuffer(f[0], "<f4")[:3], np.array([math.nan, math.inf, 0.5], "<f4"))),
    Case("score.nonfinite", "finite scores carry no count", score("y7", models=["div@2"]),
         scores("y7", [ok("div@2", 1, nonfinite=ABSENT)])),
    Case("score.reply-limit", "64 unknown names of the longest form fit the header",
         score("l1", models=[f"{i:03d}{MAX_NAME[3:]}" for i in range(64)]),
         scores("l1", [failed(f"{i:03d}{MAX_NAME[3:]}", "unknown_model") for i in range(64)])),
    Case("leaf-reply.bounded", "a leaf's huge error is cut: message, lists, nesting",
         score("l2", models=["ctr@3", "div@2"]),
         scores("l2", [ok("ctr@3", 1), failed("div@2", "model_error", error={
             "message": Pred(lambda m: len(m) <= 2000 and m.endswith("…"), "cut to 2000"),
             "missing": list(range(20)), "missing_omitted": 4980, "nested": ABSENT,
             "label": Pred(lambda s: len(s) <= 256, "cut to 256")})]),
         setup=answers("model_error", "m" * 30_000, missing=list(range(5000)),
                       nested=nested(300), label="x" * 5000)),
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_client_root(node, fake, case):
    run(case, node.root.endpoint, node)


def fuzzed(seed: int) -> list:
    """A score request with one field, frame or byte changed at random."""
    rng = np.random.default_rng(seed)
    head = {"v": 1, "type": "score", "id": f"z{seed}", "user": USER, "models": ["ctr@3"],
            "deadline_ms": 2000}
    values = [None, True, -1, 0, 2**63, 1.5, "", "x" * 300, [], [[]], {}, {"a": 1}, "ctr@3",
              ["div"], nested(50), 2**64 - 1, -(2**63)]
    key = str(rng.choice(list(head) + ["models", "extra"]))
    head[key] = values[rng.integers(len(values))]
    frames = [orjson.dumps(head), ids(CANDS[: rng.integers(0, len(CANDS))])]
    if rng.random() < 0.3:   # and some bytes of frame 0 flipped
        raw = bytearray(frames[0])
        for pos in rng.integers(0, len(raw), size=3):
            raw[pos] = rng.integers(0, 256)
        frames[0] = bytes(raw)
    return frames


FUZZ = fuzz_cases("fuzzed request", fuzzed)


@pytest.mark.parametrize("case", FUZZ, ids=case_id)
def test_no_client_input_yields_internal(node, case):
    run(case, node.root.endpoint, node)   # `run` refuses `internal` in any reply


@covers("envelope.one-reply")
def test_a_burst_of_good_and_bad_requests_gets_one_reply_each(node):
    """Many requests in flight on one socket: each gets exactly one reply,
    matched by its id, whatever order they come back in."""
    sent = {}
    sock = dealer(__import__("zmq").Context.instance(), node.root.endpoint)
    try:
        for i in range(60):
            rid = f"b{i}"
            frames = [score(rid, models=["ctr@3", "div@2"], deadline_ms=2000),
                      score(rid, v=2), score(rid, user="x"), score(rid, models=["nosuch"]),
                      score(rid, cands=[])][i % 5]
            sent[rid] = frames
            sock.send_multipart(frames)
        got: dict = {}
        end = time.monotonic() + 15
        while len(got) < len(sent) and time.monotonic() < end:
            if sock.poll(100):
                header = orjson.loads(sock.recv_multipart()[0])
                assert header["id"] not in got, f"two replies to {header['id']}"
                got[header["id"]] = header
        assert set(got) == set(sent)
        assert not sock.poll(300), "a reply more than there were requests"
    finally:
        sock.close(0)


@covers("pong.root")
def test_the_roots_pong(node):
    """A root's pong: role, name, pid, config, the models a request without
    `models` gets, and one entry per leaf link."""
    from tests.support.procs import ping
    pong = ping(node.root.endpoint, timeout=5)
    link = {"leaf": "leaf-0", "endpoint": node.cfg["leaves"][0]["endpoints"][0], "healthy": True,
            "outstanding": 0, "models": ["ctr@3", "ctr@4", "eng@1"], "pid": node.leaf0.pid,
            "transport": "shm", "shm": {"slots": 8, "slot_bytes": 1 << 20, "held": 0},
            "max_message_bytes": MAX_MESSAGE_BYTES}
    match(pong, {"v": 1, "type": "pong", "id": Pred(bool, "the ping's id"), "ok": True,
                 "role": "root", "name": "root-c",
                 "pid": node.root.pid, "config": Pred(bool, "the config id"),
                 "models": DEFAULT_SET, "leaves": [link, ANY_LINK, ANY_LINK]})
    assert [entry["transport"] for entry in pong["leaves"]] == ["shm", "socket", "socket"]


ANY_LINK = Pred(lambda e: {"leaf", "endpoint", "healthy", "outstanding", "models", "pid",
                           "transport"} <= set(e), "a link entry")


@covers("score.models-limit")
def test_a_default_set_over_the_limit_is_refused():
    """A config whose current versions outnumber what one reply may carry: a
    request without `models` is refused, naming the way out."""
    from types import SimpleNamespace

    from _trim.transport.protocol import ProtocolError
    from rootproc.intake import resolve_models
    from rootproc.rollout.installed import ActiveConfig
    active = ActiveConfig("many", {f"m{i}@1": ("f",) for i in range(65)})
    pool = SimpleNamespace(links=[], health_timeout_s=1.0, hosted=set)
    with pytest.raises(ProtocolError, match="65 model versions, limit 64") as refused:
        resolve_models(active, pool, None, 0.0)
    assert refused.value.kind == "too_large"
    assert len(resolve_models(ActiveConfig("64", {f"m{i}@1": ("f",) for i in range(64)}),
                              pool, None, 0.0)) == 64
