"""One root ↔ leaf link over a real ipc socket, the leaf played by a ROUTER in
this process: what routes before a pong, after the connection drops, after a
stale pong, and while the leaf says it is draining."""
from __future__ import annotations

import time

import orjson
import pytest
import zmq

from rootproc.leaves.replicas import LeafLink


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def until(what, check, link=None, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if link is not None:
            link.watch_connection(time.monotonic())
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def pong(ping_frames, **fields) -> list:
    header = orjson.loads(ping_frames[-1])
    return [ping_frames[0], orjson.dumps({"v": 1, "type": "pong", "id": header["id"], "ok": True,
                                          "role": "leaf", "pid": 4242, **fields})]


def read_pong(link) -> None:
    assert link.socket.poll(5000)
    link.on_pong(orjson.loads(link.socket.recv()), time.monotonic())


READY = {"models": [{"model": "ctr@3", "ready": True}, {"model": "eng@1", "ready": False}]}


def test_routing_follows_the_process_behind_the_endpoint(ctx, tmp_path):
    endpoint = f"ipc://{tmp_path}/leaf.ipc"
    leaf = ctx.socket(zmq.ROUTER)
    leaf.bind(endpoint)
    link = LeafLink(ctx, "leaf-0", endpoint, ["ctr@3", "eng@1"], "none")
    try:
        # Connected: pinged at once; nothing routes before the pong.
        until("the first ping", lambda: leaf.poll(0), link)
        first = leaf.recv_multipart()
        assert not link.routable("ctr@3")
        leaf.send_multipart(pong(first, **READY))
        read_pong(link)
        assert link.routable("ctr@3") and not link.routable("eng@1")
        assert link.healthy(time.monotonic(), 1.0)

        # A ping asked now, answered only after the connection dropped: stale.
        link.ping()
        assert leaf.poll(5000)
        asked = leaf.recv_multipart()
        leaf.close(0)
        until("the drop", lambda: not link.routable("ctr@3"), link)
        assert not link.healthy(time.monotonic(), 1.0)

        # Another process binds the endpoint; its first ping comes at once.
        leaf = ctx.socket(zmq.ROUTER)
        leaf.bind(endpoint)
        until("the new process's ping", lambda: leaf.poll(0), link)
        fresh = leaf.recv_multipart()
        link.on_pong(orjson.loads(pong(asked, **READY)[1]), time.monotonic())
        assert not link.routable("ctr@3"), "a pong asked of the dead connection counts"
        leaf.send_multipart(pong(fresh, models=[{"model": "ctr@3", "ready": False}]))
        read_pong(link)
        assert not link.routable("ctr@3"), "still loading"
        link.ping()
        assert leaf.poll(5000)
        leaf.send_multipart(pong(leaf.recv_multipart(), draining=True, **READY))
        read_pong(link)
        assert link.draining and not link.routable("ctr@3")
        assert link.models == {"ctr@3"}   # still what it serves, for status
    finally:
        link.close()
        leaf.close(0)


def test_a_pong_without_models_lets_the_placement_stand_in(ctx, tmp_path):
    endpoint = f"ipc://{tmp_path}/other.ipc"
    leaf = ctx.socket(zmq.ROUTER)
    leaf.bind(endpoint)
    link = LeafLink(ctx, "leaf-0", endpoint, ["ctr@3"], "none")
    try:
        until("the first ping", lambda: leaf.poll(0), link)
        leaf.send_multipart(pong(leaf.recv_multipart()))
        read_pong(link)
        assert link.routable("ctr@3") and link.models == {"ctr@3"}
    finally:
        link.close()
        leaf.close(0)


def test_what_waits_unread_counts_as_life_only_after_an_answer(ctx, tmp_path):
    """A leaf whose messages are not answers (pongs to no ping of ours, of
    another protocol version) stays out of rotation even while such a
    message waits unread; a leaf that answered last keeps its place while
    its next answer waits for a busy root to read it."""
    endpoint = f"ipc://{tmp_path}/noise.ipc"
    leaf = ctx.socket(zmq.ROUTER)
    leaf.bind(endpoint)
    link = LeafLink(ctx, "leaf-0", endpoint, ["ctr@3"], "none")
    later = lambda: time.monotonic() + 5.0   # noqa: E731  past a 1 s health timeout
    try:
        until("the first ping", lambda: leaf.poll(0), link)
        leaf.send_multipart(pong(leaf.recv_multipart(), **READY))
        read_pong(link)
        # Asked again; the answer waits unread (a busy root): still in rotation.
        link.ping()
        assert leaf.poll(5000)
        asked = leaf.recv_multipart()
        leaf.send_multipart(pong(asked, **READY))
        assert link.socket.poll(5000)
        assert link.healthy(later(), 1.0)
        read_pong(link)

        # Asked; what comes back answers no ping of ours. Read, it is ignored;
        # the next one waiting unread earns nothing either.
        link.ping()
        assert leaf.poll(5000)
        asked = leaf.recv_multipart()
        foreign = [asked[0], orjson.dumps({"v": 1, "type": "pong", "id": "not-a-ping", "ok": True,
                                           "role": "leaf", **READY})]
        leaf.send_multipart(foreign)
        read_pong(link)
        leaf.send_multipart(foreign)
        assert link.socket.poll(5000)
        assert not link.healthy(later(), 1.0), "a leaf that sends only noise stays in rotation"

        # Its answer read, it is back.
        leaf.send_multipart(pong(asked, **READY))
        read_pong(link)    # the foreign one
        read_pong(link)    # the answer
        assert link.healthy(later() - 5.0, 1.0)
    finally:
        link.close()
        leaf.close(0)
