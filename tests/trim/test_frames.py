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


def test_a_message_past_the_limits_is_read_to_its_end_keeping_only_its_first_frames(pair):
    """Frames past ``max_frames``, or past ``max_nbytes`` in all, are read and
    dropped as they come: the reader never holds the rest of the message."""
    from _trim.transport.frames import Cut

    a, b = pair
    send_frames(a, [b"head", b"ids"] + [b"x"] * 50_000)
    send_frames(a, [b"next"])
    cut = recv_waiting(b, max_frames=16, max_nbytes=1 << 20)
    assert isinstance(cut, Cut) and len(cut) == 16 and cut.reason == "frames"
    assert (cut.n_frames, cut.nbytes, cut.limit) == (50_002, 7 + 50_000, 16)
    assert [f.bytes for f in cut[:2]] == [b"head", b"ids"]
    assert [f.bytes for f in recv_waiting(b, max_frames=16)] == [b"next"]   # the next one whole
    send_frames(a, [b"head"] + [b"\0" * 1000] * 5)
    cut = recv_waiting(b, max_frames=16, max_nbytes=2500)
    assert isinstance(cut, Cut) and cut.reason == "bytes" and len(cut) == 3
    assert (cut.n_frames, cut.nbytes, cut.limit) == (6, 5004, 2500)
    send_frames(a, [b"a", b"b"])
    whole = recv_waiting(b, max_frames=2, max_nbytes=2)
    assert not isinstance(whole, Cut) and [f.bytes for f in whole] == [b"a", b"b"]
