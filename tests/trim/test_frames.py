"""Whole messages in and out over real sockets with the int-flag helpers."""
import pytest
import zmq

from _trim.transport.frames import NOBLOCK, recv_waiting, send_frames


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (a, b):
        s.setsockopt(zmq.LINGER, 0)
    a.bind("inproc://frames")
    b.connect("inproc://frames")
    yield a, b
    a.close()
    b.close()
    ctx.term()


def test_nothing_waiting_is_none_not_an_exception(pair):
    _, b = pair
    assert recv_waiting(b) is None


def test_messages_arrive_whole_and_in_order(pair):
    a, b = pair
    big = bytes(range(256)) * 1024  # above pyzmq's copy threshold: sent without a copy
    send_frames(a, [b"one", b"", big])
    send_frames(a, [b"two"])
    first = recv_waiting(b)
    assert [f.bytes for f in first] == [b"one", b"", big]
    assert [f.bytes for f in recv_waiting(b)] == [b"two"]
    assert recv_waiting(b) is None


def test_a_refused_noblock_send_queues_no_part():
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        for s in (push, pull):
            s.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 1)
        pull.setsockopt(zmq.RCVHWM, 1)
        pull.bind("inproc://full")
        push.connect("inproc://full")
        sent = 0
        with pytest.raises(zmq.Again):
            for sent in range(1, 100):
                send_frames(push, [b"head", b"body %d" % sent], NOBLOCK)
        got = []
        while (msg := recv_waiting(pull)) is not None:
            got.append([f.bytes for f in msg])
        # every message that was accepted arrives with both parts; the refused one not at all
        assert got == [[b"head", b"body %d" % i] for i in range(1, sent)]
    finally:
        push.close()
        pull.close()
        ctx.term()
