"""Leaf → root (docs/protocol.md, section 2, "Root ↔ leaf"): what the real root
does with what a leaf says. leaf-1 is the scripted `FakeLeaf`; each case
scripts its pongs or replies, then a client sends the root a score request
and gets the documented reply."""
from __future__ import annotations

import time

import orjson
import pytest

from .conftest import HEALTH_MS, PING_MS, settle
from .harness import Case, Pred, case_id, covers, run, until
from .messages import ALL_FEATURES, failed, ok, score, scores, trimmed_nbytes

pytestmark = pytest.mark.slow

BOTH = ["ctr@3", "div@2"]
SOON_S = 2.0    # "at once": well before the request's 8 s deadline


def request(rid, deadline_ms=8000):
    return score(rid, models=BOTH, deadline_ms=deadline_ms)


def replying(make):
    """setup: leaf-1 answers every score request with ``make(fake, header, frames)``."""
    def setup(ctx):
        ctx.fake.script(answer=lambda h, f: make(ctx.fake, h, f))
        ctx.t0 = time.monotonic()
    return setup


def per_replica(*makes):
    """setup: replica i answers with ``makes[i]``."""
    def setup(ctx):
        for i, make in enumerate(makes):
            ctx.fake.script(answer=lambda h, f, make=make: make(ctx.fake, h, f), replicas=[i])
        ctx.t0 = time.monotonic()
    return setup


def at_once(tries=1):
    """check: answered well before the deadline, after ``tries`` leaf messages."""
    def check(ctx, header, frames):
        assert time.monotonic() - ctx.t0 < SOON_S, "the client waited for its deadline"
        assert len(ctx.fake.received()) == tries, ctx.fake.received()
    return check


def head(**fields):
    """A reply of leaf-1: the request's id and these fields."""
    return lambda fake, h, f: [orjson.dumps({"id": h["id"], **fields})]


def good(fake, h, f):
    return fake.scores(h, f)


def refuse(kind):
    return lambda fake, h, f: fake.error(h, kind, f"{kind} here")


def leaf_error(message):
    return failed("div@2", "leaf_error", message, leaf="leaf-1")


REPLIES = [
    # A reply naming the request, that the root cannot use: that model fails at once.
    Case("leaf-reply.unusable", "another protocol version", request("a1"),
         scores("a1", [ok("ctr@3", 1), leaf_error("leaf leaf-1 replied with protocol version 2")]),
         setup=replying(head(v=2, type="scores", ok=True)), check=at_once()),
    Case("leaf-reply.unusable", "no version", request("a2"),
         scores("a2", [ok("ctr@3", 1), leaf_error("protocol version None")]),
         setup=replying(head(type="scores", ok=True)), check=at_once()),
    Case("leaf-reply.unusable", "a type that is neither scores nor error", request("a3"),
         scores("a3", [ok("ctr@3", 1), leaf_error("replied 'what' to a score request")]),
         setup=replying(head(v=1, type="what")), check=at_once()),
    Case("leaf-reply.unusable", "scores without ok true", request("a4"),
         scores("a4", [ok("ctr@3", 1), leaf_error("without \"ok\": true")]),
         setup=replying(lambda fake, h, f: [orjson.dumps({**orjson.loads(fake.scores(h, f)[0]),
                                                         "ok": False})] + fake.scores(h, f)[1:]),
         check=at_once()),
    Case("leaf-reply.unusable", "scores without their frame", request("a5"),
         scores("a5", [ok("ctr@3", 1), leaf_error("returned 0 frame")]),
         setup=replying(lambda fake, h, f: fake.scores(h, f)[:1]), check=at_once()),
    Case("leaf-reply.unusable", "scores of the wrong size", request("a6"),
         scores("a6", [ok("ctr@3", 1), leaf_error("returned 1 frame.*60 score bytes, for 16")]),
         setup=replying(lambda fake, h, f: fake.scores(h, f, [0.5] * 15)), check=at_once()),
    Case("leaf-reply.unusable", "an error without an error object", request("a7"),
         scores("a7", [ok("ctr@3", 1), leaf_error("without an error object")]),
         setup=replying(head(v=1, type="error", ok=False)), check=at_once()),
    Case("leaf-reply.unusable", "an error whose kind is no string", request("a8"),
         scores("a8", [ok("ctr@3", 1), leaf_error("without an error object")]),
         setup=replying(head(v=1, type="error", ok=False, error={"kind": 3, "message": "x"})),
         check=at_once()),
    # A reply naming no request is dropped: the model waits for its deadline.
    Case("leaf-reply.no-id", "not JSON", request("b1", deadline_ms=400),
         scores("b1", [ok("ctr@3", 1), failed("div@2", "deadline")]),
         setup=replying(lambda fake, h, f: [b"\xffnot json"])),
    Case("leaf-reply.no-id", "an empty header", request("b2", deadline_ms=400),
         scores("b2", [ok("ctr@3", 1), failed("div@2", "deadline")]),
         setup=replying(lambda fake, h, f: [b""])),
    Case("leaf-reply.no-id", "an id that is not a string", request("b3", deadline_ms=400),
         scores("b3", [ok("ctr@3", 1), failed("div@2", "deadline")]),
         setup=replying(lambda fake, h, f: [orjson.dumps(
             {**orjson.loads(fake.scores(h, f)[0]), "id": [h["id"]]})] + fake.scores(h, f)[1:])),
    Case("leaf-reply.no-id", "the id of no request in flight", request("b4", deadline_ms=400),
         scores("b4", [ok("ctr@3", 1), failed("div@2", "deadline")]),
         setup=replying(lambda fake, h, f: fake.scores({**h, "id": "f00f"}, f))),
    # Error kinds.
    Case("leaf-reply.kinds", "a documented kind, with its details, as the leaf said it",
         request("c1"),
         scores("c1", [ok("ctr@3", 1), failed("div@2", "signature_mismatch", "^lacks x$", error={
             "missing": ["x"], "mismatched": []})]),
         setup=replying(lambda fake, h, f: fake.error(h, "signature_mismatch", "lacks x",
                                                      missing=["x"], mismatched=[])),
         check=at_once()),
    Case("leaf-reply.kinds", "an undocumented kind: leaf_error, the leaf's words kept",
         request("c2"),
         scores("c2", [ok("ctr@3", 1), failed("div@2", "leaf_error",
                                              "leaf leaf-1 reported 'gpu_on_fire': melted",
                                              error={"leaf_kind": "gpu_on_fire"})]),
         setup=replying(lambda fake, h, f: fake.error(h, "gpu_on_fire", "melted")),
         check=at_once()),
    Case("leaf-reply.kinds", "a leaf's internal is its own bug: leaf_error", request("c3"),
         scores("c3", [ok("ctr@3", 1), failed("div@2", "leaf_error", "reported 'internal': oops",
                                              error={"leaf_kind": "internal"})]),
         setup=replying(lambda fake, h, f: fake.error(h, "internal", "oops")), check=at_once()),
    # Resends.
    Case("leaf-reply.resend", "overloaded: the other replica", request("d1"),
         scores("d1", [ok("ctr@3", 1), ok("div@2", 2, leaf="leaf-1")]),
         setup=per_replica(refuse("overloaded"), good), check=at_once(tries=2)),
    Case("leaf-reply.resend", "shutting_down: the other replica", request("d2"),
         scores("d2", [ok("ctr@3", 1), ok("div@2", 2)]),
         setup=per_replica(refuse("shutting_down"), good), check=at_once(tries=2)),
    Case("leaf-reply.resend", "each replica once: the last refusal is the result", request("d3"),
         scores("d3", [ok("ctr@3", 1), failed("div@2", "overloaded", "overloaded here")]),
         setup=replying(refuse("overloaded")), check=at_once(tries=2)),
    Case("leaf-reply.resend", "other kinds are not resent", request("d4"),
         scores("d4", [ok("ctr@3", 1), failed("div@2", "model_error")]),
         setup=replying(refuse("model_error")), check=at_once(tries=1)),
]


@pytest.mark.parametrize("case", REPLIES, ids=case_id)
def test_leaf_replies(node, fake, case):
    run(case, node.root.endpoint, node)


# -- pongs ------------------------------------------------------------------------------


def ponging(**fields):
    """setup: leaf-1's pongs carry ``fields`` (a value of None drops the field);
    wait until the root has heard a few."""
    def setup(ctx):
        def pong(h):
            frames = ctx.fake.pong(h, **fields)
            body = {k: v for k, v in orjson.loads(frames[0]).items() if v is not None}
            return [orjson.dumps(body)]
        ctx.fake.script(pong=pong)
        ctx.fake.heard()
    return setup


def out_of_rotation(**fields):
    """setup: as `ponging`, then wait until the root routes nothing to leaf-1."""
    def setup(ctx):
        ponging(**fields)(ctx)
        # Out after HEALTH_MS of silence; generous on a loaded machine, whose root
        # may be late to notice (its own lateness never counts against a leaf).
        # Then out for good: a reply to an earlier case's request, read late, is
        # a sign of life that brings the replica back for one more HEALTH_MS.
        for _ in range(2):
            until("leaf-1 out of rotation", lambda: "div@2" not in ctx.routes("leaf-1"),
                  timeout=10 * HEALTH_MS / 1000)
            time.sleep(HEALTH_MS / 1000)
    return setup


def untrimmed(ctx, header, frames):
    result = header["results"][1]
    assert result["bytes_sent"] == trimmed_nbytes(ctx.world, "div@2", names=ALL_FEATURES), result


def nothing_sent(ctx, header, frames):
    assert ctx.fake.received() == [], "a request went to a replica out of rotation"


UNAVAILABLE = failed("div@2", "unavailable", "no leaf replica serves div@2")
TRIMMED = Pred(lambda t: t is True, "true")

PONGS = [
    Case("pong.signature-hash", "the config's hash: trimmed", request("p1"),
         scores("p1", [ok("ctr@3", 1), ok("div@2", 2, trimmed=True)]), setup=ponging()),
    Case("pong.signature-hash", "no hash: every feature (fail open)", request("p2"),
         scores("p2", [ok("ctr@3", 1), ok("div@2", 2, trimmed=False)]), check=untrimmed,
         setup=ponging(models=[{"model": "div@2", "ready": True}])),
    Case("pong.signature-hash", "a hash that is not a string: none", request("p3"),
         scores("p3", [ok("ctr@3", 1), ok("div@2", 2, trimmed=False)]), check=untrimmed,
         setup=ponging(models=[{"model": "div@2", "ready": True, "signature_hash": 5}])),
    Case("pong.signature-hash", "another hash: every feature", request("p4"),
         scores("p4", [ok("ctr@3", 1), ok("div@2", 2, trimmed=False)]), check=untrimmed,
         setup=ponging(models=[{"model": "div@2", "ready": True, "signature_hash": "f" * 64}])),
    Case("pong.models", "no models: the placement stands in, untrimmed", request("p5"),
         scores("p5", [ok("ctr@3", 1), ok("div@2", 2, trimmed=False)]), check=untrimmed,
         setup=ponging(models=None)),
    Case("pong.models", "an entry without ready: not routed", request("p6"),
         scores("p6", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
         setup=out_of_rotation(models=[{"model": "div@2", "signature_hash": "x"}])),
    Case("pong.models", "ready false: not routed", request("p7"),
         scores("p7", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
         setup=out_of_rotation(models=[{"model": "div@2", "ready": False}])),
    Case("pong.models", "an entry whose model is not NAME@VERSION is ignored", request("p8"),
         scores("p8", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
         setup=out_of_rotation(models=[{"model": "div 2", "ready": True}])),
    Case("pong.draining", "draining: no new request", request("p9"),
         scores("p9", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
         setup=out_of_rotation(draining=True)),
    Case("pong.pid", "a pid that is not a number is ignored", request("p10"),
         scores("p10", [ok("ctr@3", 1), ok("div@2", 2, trimmed=TRIMMED)]),
         setup=ponging(pid="leaf-one")),
    Case("pong.id", "a pong with another id is not an answer", request("p11"),
         scores("p11", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
         setup=out_of_rotation(id="not-a-ping")),
    Case("pong.id", "a pong of another protocol version is not an answer", request("p12"),
         scores("p12", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
         setup=out_of_rotation(v=2)),
]


@pytest.mark.parametrize("case", PONGS, ids=case_id)
def test_pongs(node, fake, case):
    run(case, node.root.endpoint, node)


# -- message limits ---------------------------------------------------------------------


def div_nbytes(ctx) -> int:
    """The size of div@2's (trimmed) message for `request`."""
    return trimmed_nbytes(ctx.world, "div@2")


def limited(*limits):
    """setup: replica i's pongs advertise ``limits[i](ctx)`` as max_message_bytes
    (a callable, or the value itself; None: no such field)."""
    def setup(ctx):
        for i, limit in enumerate(limits):
            value = limit(ctx) if callable(limit) else limit
            fields = {} if value is None else {"max_message_bytes": value}
            ctx.fake.script(pong=lambda h, fields=fields: ctx.fake.pong(h, **fields), replicas=[i])
        ctx.fake.heard()
        ctx.t0 = time.monotonic()
    return setup


def sent_to(*replicas):
    """check: the request went to these replicas (indexes), once each."""
    def check(ctx, header, frames):
        got = [i for i, r in enumerate(ctx.fake.replicas) for _ in r.received]
        assert got == list(replicas), got
    return check


def too_large(ctx_limit):
    return failed("div@2", "too_large", rf"div@2 is \d+ bytes, above the {ctx_limit} bytes",
                  error={"limit": ctx_limit, "leaf": "leaf-1",
                         "nbytes": Pred(lambda n: type(n) is int and n > ctx_limit, "the size")})


LIMITS = [
    Case("pong.max-message-bytes", "over every replica's limit: too_large, nothing sent",
         request("m1"), scores("m1", [ok("ctr@3", 1), too_large(256)]),
         setup=limited(256, 256), check=nothing_sent),
    Case("pong.max-message-bytes", "exactly the limit is sent", request("m2"),
         scores("m2", [ok("ctr@3", 1), ok("div@2", 2, trimmed=TRIMMED)]),
         setup=limited(div_nbytes, div_nbytes), check=sent_to(0)),
    Case("pong.max-message-bytes", "a replica it does not fit is passed over", request("m3"),
         scores("m3", [ok("ctr@3", 1), ok("div@2", 2, trimmed=TRIMMED)]),
         setup=limited(256, None), check=sent_to(1)),
    Case("pong.max-message-bytes", "no limit advertised (an older leaf): sent, any size",
         request("m4"), scores("m4", [ok("ctr@3", 1), ok("div@2", 2)]),
         setup=limited(None, None), check=sent_to(0)),
] + [
    Case("pong.max-message-bytes", f"a limit that is not a positive integer is ignored: {bad!r}",
         request(f"m5-{i}"), scores(f"m5-{i}", [ok("ctr@3", 1), ok("div@2", 2)]),
         setup=limited(bad, bad), check=sent_to(0))
    for i, bad in enumerate(["1000", True, 0, -1, 100.0, [256], {"bytes": 256}])
]


@pytest.mark.parametrize("case", LIMITS, ids=case_id)
def test_message_limits(node, fake, case):
    run(case, node.root.endpoint, node)


@covers("health.rotation")
def test_rotation_follows_health(node, fake):
    """Replicas that stop answering pings leave rotation once silent for
    health_timeout_ms since the first ping they left unanswered (the client
    sees `unavailable` at once, and they get no request), and come back with
    their next pong, within ping_interval_ms of answering again."""
    t0 = time.monotonic()
    fake.script(pong=lambda h: None)
    until("leaf-1 unhealthy", lambda: "div@2" not in node.routes("leaf-1"), timeout=10)
    gone = time.monotonic() - t0
    # Its last pong was at most a ping interval (plus the loop's poll) before t0.
    assert (HEALTH_MS - PING_MS) / 1000 - 0.05 <= gone <= (HEALTH_MS + 2 * PING_MS) / 1000 + 1.0, gone
    case = Case("health.rotation", "unavailable at once", request("h1", deadline_ms=8000),
                scores("h1", [ok("ctr@3", 1), UNAVAILABLE]), check=nothing_sent,
                setup=lambda ctx: setattr(ctx, "t0", time.monotonic()))
    run(case, node.root.endpoint, node)
    assert time.monotonic() - node.t0 < SOON_S
    t1 = time.monotonic()
    fake.script()
    settle(node)
    assert time.monotonic() - t1 < 3 * PING_MS / 1000 + 1.0, "back in rotation too slowly"
