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
