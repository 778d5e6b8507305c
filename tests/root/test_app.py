"""`Root` (rootproc/app.py) in one process: build, run and close own every
part. A stopped root answers what it took in, then closes every socket it
made (its zmq context terminates) and its socket file; a build that fails
leaves nothing open and keeps its hands off another root's endpoint."""
from __future__ import annotations

import os
import signal

import pytest
import zmq

from _trim.errors import TrimmerError
from _trim.transport.protocol import pack_header, unpack_header
from rootproc.app import Root
from rootproc.settings import RootSettings
from signatures.runtime.settings import load

from .world import root_config, write_root_config


def settings(world: dict, tmp_path, bind: str) -> RootSettings:
    leaves = {"leaf-0": f"ipc://{tmp_path}/leaf-0.ipc", "leaf-1": f"ipc://{tmp_path}/leaf-1.ipc"}
    path = write_root_config(tmp_path / "root.json", root_config(world, leaves, bind))
    return load(RootSettings, path=path)


@pytest.fixture
def handlers():
    """The stop signals' handlers as they were: the serving loop installs its own."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_stopped_root_answers_what_it_took_in_then_closes_everything(world, tmp_path, handlers):
    sock_path = f"{tmp_path}/root.ipc"
    ctx = zmq.Context()
    root = Root.build(settings(world, tmp_path, f"ipc://{sock_path}"), ctx)
    assert root.server is not None and os.path.exists(sock_path)
    client = ctx.socket(zmq.DEALER)
    client.connect(f"ipc://{sock_path}")
    client.send_multipart([pack_header({"type": "ping", "id": "p1"})])
    root.server.request_stop()
    try:
        assert root.run() == 0
    finally:
        root.close()
    root.close()   # a second close does nothing
    assert client.poll(2000), "the ping sent before the stop got no reply"
    pong = unpack_header(client.recv_multipart()[0])
    assert pong["type"] == "pong" and pong["id"] == "p1"
    assert not os.path.exists(sock_path)
    client.close(0)
    ctx.term()   # waits forever if the root left a socket open


def test_a_build_that_fails_closes_what_it_made(world, tmp_path, monkeypatch):
    built: list[Root] = []   # held, so that no collector closes what it made instead
    build = Root._build
    monkeypatch.setattr(Root, "_build", lambda root, *a: (built.append(root), build(root, *a)))
    ctx = zmq.Context()
    other = ctx.socket(zmq.ROUTER)   # another process's endpoint, say
    other.bind("tcp://127.0.0.1:0")
    taken = other.getsockopt(zmq.LAST_ENDPOINT).decode()
    # A live process's endpoint is refused before anything is made.
    with pytest.raises(TrimmerError, match="in use"):
        Root.build(settings(world, tmp_path, taken), ctx)
    assert built[-1].links is None and built[-1].store is None
    other.close(0)
    # A socket file in a directory that does not exist fails at the bind: the
    # links are made by then.
    with pytest.raises((TrimmerError, zmq.ZMQError)):
        Root.build(settings(world, tmp_path, f"ipc://{tmp_path}/no-such-dir/root.ipc"), ctx)
    failed = built[-1]
    assert failed.links is not None and failed.client is None
    assert all(link.socket.closed for link in failed.links.pool.links)
    # The store was closed too: LMDB opens it only once per process.
    Root.build(settings(world, tmp_path, "tcp://127.0.0.1:0"), ctx).close()
    ctx.term()   # waits forever if the failed build left a socket open
