"""The router's state machine in one process, with fake links: a reply read
while a send waits for a shared-memory slot only records, and what it asks
for (a resend, another request's answer) happens once that send returns."""
from __future__ import annotations

import time
import types

import pytest
import zmq

from _trim.transport.frames import recv_waiting
from _trim.transport.protocol import pack_header, unpack_header
from rootproc.frontend import ClientReplies
from rootproc.leaves import encoding
from rootproc.leaves.encoding import ModelBatch
from rootproc.metrics import RootMetrics
from rootproc.router import Router

NBYTES = 8


@pytest.fixture(autouse=True)
def fake_kernel(monkeypatch):
    """Batches of NBYTES bytes without building a real batch and plan."""
    monkeypatch.setattr(encoding, "_trim", types.SimpleNamespace(
        encoded_nbytes=lambda plan, batch: NBYTES,
        encode_into=lambda plan, batch, buf: buf.fill(1)))


class Link:
    """A leaf link whose sends are recorded and whose replies the test writes
    into the other end of a PAIR socket."""

    def __init__(self, ctx, name: str, models, events: list):
        self.name, self.endpoint, self.compression = name, f"inproc://{name}", "none"
        self.models, self.hashes, self.outstanding, self.pid = frozenset(models), {}, 0, None
        self.draining, self.max_message_bytes = False, None
        self.leaf = ctx.socket(zmq.PAIR)
        self.leaf.bind(self.endpoint)
        self.socket = ctx.socket(zmq.PAIR)
        self.socket.connect(self.endpoint)
        self.events, self.sent = events, []

    def healthy(self, now, timeout_s) -> bool:
        return True

    def send(self, frames) -> bool:
        self.events.append(("send", self.name))
        self.sent.append(unpack_header(frames[0]))
        return True

    def on_pong(self, header, now) -> None:
        pass

    def heard(self, now) -> None:
        pass

    def answer(self, mid: str, kind: str | None = None, rows: int = 2) -> None:
        if kind is None:
            self.leaf.send_multipart([pack_header({"type": "scores", "id": mid, "ok": True}),
                                      b"\0" * 4 * rows])
        else:
            self.leaf.send_multipart([pack_header({"type": "error", "id": mid, "ok": False,
                                                   "error": {"kind": kind, "message": kind}})])
        self.socket.poll(1000)

    def close(self) -> None:
        self.leaf.close(0)
        self.socket.close(0)


class Pool:
    health_timeout_s = 1.0

    def __init__(self, links):
        self.links = links

    def candidates(self, key, now):
        return sorted((link for link in self.links if key in link.models and not link.draining),
                      key=lambda link: link.outstanding)


class SlowRing:
    """A ring with no free slot: the send waits, reading the link's replies, then
    goes over the socket."""

    def __init__(self, events):
        self.events = events

    def place(self, mid, plan, batch, nbytes, read_replies, what=""):
        self.events.append(("wait", "start"))
        read_replies(0.05)
        self.events.append(("wait", "end"))
        return None


class Shm:
    def __init__(self, rings: dict):
        self.rings = rings

    def channel(self, link):
        return self.rings.get(link.name)

    def sent(self, link):
        pass

    def replied(self, link, mid):
        pass


class Replies(ClientReplies):
    """The client socket's send side, each reply recorded instead of sent."""

    def __init__(self, events: list, replies: list, metrics):
        super().__init__(None, "root", metrics)
        self.events, self.replies = events, replies

    def send(self, envelope, frames) -> None:
        self.events.append(("reply", envelope[0]))
        self.replies.append((envelope[0], unpack_header(frames[0])))


@pytest.fixture
def world():
    ctx = zmq.Context()
    events: list = []
    l1 = Link(ctx, "l1", ["a@1", "b@1"], events)
    l2 = Link(ctx, "l2", ["a@1"], events)
    replies: list = []
    metrics = RootMetrics()
    router = Router(Pool([l1, l2]), Shm({"l1": SlowRing(events)}), metrics,
                    Replies(events, replies, metrics))
    yield types.SimpleNamespace(router=router, l1=l1, l2=l2, events=events, replies=replies)
    l1.close()
    l2.close()
    ctx.term()


def open_request(router, rid: str, keys, deadline_s: float = 5.0):
    request = router.open(rid, [rid.encode()], 2, time.monotonic() + deadline_s, time.perf_counter())
    for key in keys:
        request.add_result(key, True)
    return request


def deliver(router, link) -> None:
    """What the loop does with the messages waiting on ``link``."""
    while (frames := recv_waiting(link.socket)) is not None:
        router.on_leaf(link, frames)


def send(router, request, idx: int):
    key = request.results[idx]["model"]
    router.send(request, idx, ModelBatch(key, None, None, NBYTES), time.monotonic())


def test_overloaded_reply_read_in_a_slot_wait_is_resent_after_the_send(world):
    r, l1, l2 = world.router, world.l1, world.l2
    request = open_request(r, "r1", ["a@1", "b@1"])
    send(r, request, 0)                      # a@1 to l1 (least outstanding first)
    assert [h["model"] for h in l1.sent] == ["a@1"]
    l1.answer(l1.sent[0]["id"], "overloaded")
    world.events.clear()
    send(r, request, 1)                      # b@1 waits for a slot on l1 and reads the reply
    assert world.events[:2] == [("wait", "start"), ("wait", "end")], "a resend inside the slot wait"
    assert not l2.sent
    r.park(request)
    assert [h["model"] for h in l2.sent] == ["a@1"], "the resend goes out once the send returned"
    assert not world.replies
    l2.answer(l2.sent[0]["id"])
    l1.answer(l1.sent[1]["id"])
    deliver(r, l2)
    deliver(r, l1)
    [(rid, header)] = world.replies
    assert rid == b"r1" and [res["ok"] for res in header["results"]] == [True, True]
    assert header["results"][0]["leaf"] == "l2"
    assert l1.outstanding == l2.outstanding == 0 and r.count == 0


def test_request_completed_in_a_slot_wait_is_answered_after_the_send(world):
    r, l1 = world.router, world.l1
    first = open_request(r, "first", ["b@1"])
    world.l1.models = frozenset(["b@1"])
    world.l2.models = frozenset()
    # The first request's send waits too, reading nothing yet.
    send(r, first, 0)
    r.park(first)
    l1.answer(l1.sent[0]["id"])
    second = open_request(r, "second", ["b@1"])
    world.events.clear()
    send(r, second, 0)                       # its slot wait reads the first's reply
    assert ("reply", b"first") not in world.events, "answered inside another send's wait"
    r.park(second)
    assert [rid for rid, _ in world.replies] == [b"first"]
    assert world.replies[0][1]["results"][0]["ok"]


def test_deadline_answers_with_what_it_has(world):
    r, l1 = world.router, world.l1
    world.l2.models = frozenset()
    request = open_request(r, "late", ["a@1"], deadline_s=0.01)
    send(r, request, 0)
    r.park(request)
    assert r.count == 1 and l1.outstanding == 1
    r.expire(time.monotonic() + 1)
    [(_, header)] = world.replies
    assert header["results"][0]["error"]["kind"] == "deadline"
    assert l1.outstanding == 0 and r.count == 0
    l1.answer(l1.sent[0]["id"])              # too late: dropped, no second reply
    deliver(r, l1)
    assert len(world.replies) == 1


def test_shutting_down_is_resent_and_takes_the_replica_out_of_rotation(world):
    r, l1, l2 = world.router, world.l1, world.l2
    world.router.shm = Shm({})
    request = open_request(r, "r1", ["a@1"])
    send(r, request, 0)                      # to l1, first of two replicas
    r.park(request)
    l1.answer(l1.sent[0]["id"], "shutting_down")
    deliver(r, l1)
    assert l1.draining, "a shutting_down reply says the replica is draining"
    assert [h["model"] for h in l2.sent] == ["a@1"]
    l2.answer(l2.sent[0]["id"])
    deliver(r, l2)
    [(_, header)] = world.replies
    assert header["results"][0]["ok"] and header["results"][0]["leaf"] == "l2"
    later = open_request(r, "r2", ["a@1"])
    send(r, later, 0)
    assert len(l1.sent) == 1 and len(l2.sent) == 2, "no new request to a draining replica"
    # A model with no replica left to try keeps the leaf's error.
    only = open_request(r, "r3", ["b@1"])
    send(r, only, 0)
    r.park(only)
    assert only.results[0]["error"]["kind"] == "unavailable"


class Ring:
    """A ring with a free slot every time: each send goes through it."""

    def __init__(self):
        self.placed = []

    def place(self, mid, plan, batch, nbytes, read_replies, what=""):
        self.placed.append(mid)
        return {"segment": "trimmer-1-ring-00000000", "size": 64, "offset": 0, "nbytes": nbytes,
                "slot": 0}

    def unsent(self, mid):
        pass


def test_a_resend_goes_over_the_socket(world):
    r, l1, l2 = world.router, world.l1, world.l2
    rings = {"l1": Ring(), "l2": Ring()}
    r.shm = Shm(rings)
    request = open_request(r, "r1", ["a@1"])
    send(r, request, 0)
    r.park(request)
    assert "shm" in l1.sent[0] and rings["l1"].placed
    l1.answer(l1.sent[0]["id"], "overloaded")
    deliver(r, l1)
    [resent] = l2.sent
    assert "shm" not in resent and not rings["l2"].placed, "a resend took a slot"
    assert request.results[0].get("transport") is None


def test_root_made_failures_are_counted_and_logged_rate_limited(world, caplog):
    """Every `unavailable` (or `deadline`) the root makes itself is counted with
    why; the log names it once per window, then says how many it left out."""
    import logging

    from rootproc import router as router_module
    r = world.router
    caplog.set_level(logging.WARNING, logger="rootproc")
    for i in range(3):
        request = open_request(r, f"u{i}", ["c@1"])   # no replica serves c@1
        send(r, request, 0)
        assert request.results[0]["error"]["kind"] == "unavailable"
    value = r.metrics.registry.get_sample_value(
        "trimmer_root_model_failures_total",
        {"model": "c@1", "kind": "unavailable", "reason": "no_replica_in_rotation"})
    assert value == 3
    lines = [rec.getMessage() for rec in caplog.records if "c@1" in rec.getMessage()]
    assert len(lines) == 1 and "no_replica_in_rotation" in lines[0], lines
    for entry in r._logged.values():   # the window has passed
        entry[0] -= router_module.FAILURE_LOG_S
    send(r, open_request(r, "u3", ["c@1"]), 0)
    lines = [rec.getMessage() for rec in caplog.records if "c@1" in rec.getMessage()]
    assert len(lines) == 2 and "2 more like it" in lines[1], lines
    request = open_request(r, "d1", ["b@1"], deadline_s=0.0)
    send(r, request, 0)
    r.park(request)
    r.expire(time.monotonic())
    assert request.results[0]["error"]["kind"] == "deadline"
    assert r.metrics.registry.get_sample_value(
        "trimmer_root_model_failures_total",
        {"model": "b@1", "kind": "deadline", "reason": "leaf_did_not_answer"}) == 1
