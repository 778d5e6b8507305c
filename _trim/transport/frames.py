"""Whole zmq messages in and out, costing little more than their frames.

pyzmq's ``send_multipart`` and ``recv_multipart`` combine flags as enum
members, and a loop draining a socket with them ends by raising zmq.Again:
a few microseconds each, on the path of every request. These helpers do the
same work with plain ints and ask the socket before receiving.
"""
from __future__ import annotations

import zmq

SNDMORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def recv_waiting(sock: zmq.Socket) -> list | None:
    """The next whole message as zero-copy frames, or None when none is waiting."""
    if not int(sock.getsockopt(EVENTS)) & POLLIN:
        return None
    try:
        frames = [sock.recv(NOBLOCK, copy=False)]
    except zmq.Again:
        return None
    while frames[-1].more:  # the parts of a message arrive together
        frames.append(sock.recv(copy=False))
    return frames


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one message (large ones without a copy). With
    ``flags=NOBLOCK``, zmq.Again means nothing was queued: only the first part
    of a message can be refused."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags, copy=False)
