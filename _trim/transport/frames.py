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


# Frames a server reads of one message (its envelope included): a request
# has at most 4 (identity, delimiter, header, payload); past this many the
# rest is read and dropped (docs/protocol.md, rule `envelope.frames-limit`).
MAX_MESSAGE_FRAMES = 16


class Cut(list):
    """The first frames of a message past a reader's limits; the rest was
    read and dropped as it came. ``reason``: "frames" or "bytes"; ``limit``
    the one it passed; ``n_frames`` and ``nbytes`` the whole message's."""

    def __init__(self, kept: list, reason: str, limit: int, n_frames: int, nbytes: int):
        super().__init__(kept)
        self.reason, self.limit, self.n_frames, self.nbytes = reason, limit, n_frames, nbytes

    def describe(self, envelope: int = 0) -> str:
        """What was cut, as the sender counts its frames (without the
        ``envelope`` frames a ROUTER put in front)."""
        n, limit = self.n_frames - envelope, self.limit - envelope
        if self.reason == "frames":
            return f"message of {n} frames: frames past the {limit}th were read and dropped"
        return (f"message of {self.nbytes} bytes in {n} frames, over {self.limit} bytes in "
                "all: the rest was read and dropped")


def recv_waiting(sock: zmq.Socket, max_frames: int = 0, max_nbytes: int = 0) -> list | None:
    """The next whole message as zero-copy frames, or None when none is waiting.

    With ``max_frames`` / ``max_nbytes`` (0: none), a message with more
    frames, or more bytes in all, is read to its end one frame at a time,
    keeping only the frames within both limits: a `Cut`. libzmq hands a
    message over only once its last frame is in, so this bounds what the
    process holds of it after that, never what libzmq held before."""
    if not int(sock.getsockopt(EVENTS)) & POLLIN:
        return None
    try:
        frame = sock.recv(NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame]
    if not (max_frames or max_nbytes):
        while frames[-1].more:  # the parts of a message arrive together
            frames.append(sock.recv(copy=False))
        return frames
    n, nbytes, cut = 1, len(frame), ""
    more = frame.more
    while more:
        frame = sock.recv(copy=False)
        more = frame.more
        n += 1
        nbytes += len(frame)
        if cut:
            continue   # dropped: its memory goes back now
        if max_frames and n > max_frames:
            cut = "frames"
        elif max_nbytes and nbytes > max_nbytes:
            cut = "bytes"
        else:
            frames.append(frame)
    if not cut and max_nbytes and nbytes > max_nbytes:
        cut = "bytes"   # the first frame alone (kept: a router's is the sender's identity)
    if cut:
        return Cut(frames, cut, max_frames if cut == "frames" else max_nbytes, n, nbytes)
    return frames


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one message (large ones without a copy). With
    ``flags=NOBLOCK``, zmq.Again means nothing was queued: only the first part
    of a message can be refused."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags, copy=False)
