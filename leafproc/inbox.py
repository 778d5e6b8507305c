"""The leaf's side of shared-memory links: score requests whose batch lies in
a root's slot instead of a payload frame.

A request header with ``"shm": {"segment", "size", "offset", "nbytes"}`` names
the bytes; they are mapped read-only (once per segment) and decoded in place,
so the model's input tensors alias the root's slot.

Who may name a segment: a peer on an ipc connection (a tcp peer is not on
this node, and the segment would name a file of ours), running as this
leaf's user, naming a segment file that user owns (`SegmentReader` refuses
symlinks, other owners and files others can write). The peer's uid is the
kernel's word (SO_PEERCRED, through the message's ``Peer-Address``), so
the socket file's permissions are not the only guard. The root reuses the slot
once it has our reply, and the reply leaves only after the forward pass (and
any host-to-device copy, which it waits for) is done: nothing here reads a
slot after answering for it.

On a CUDA leaf each segment is registered as pinned host memory once
(``cudaHostRegister``, read-only), so the one host-to-device copy per forward
is a DMA straight from the slot.

Segments of roots that died are unlinked by their successor (or by
`reap_stale_segments` at our start), but a mapping keeps their memory alive:
when a new segment shows up, mappings of dead roots that no request still
uses are dropped.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings

import numpy as np

from _trim.transport import protocol as P
from _trim.transport.process import pid_alive
from _trim.transport.shm import SegmentReader, ipc_peer_uid, owner_pid, reap_stale_segments

log = logging.getLogger("leafproc")

# Slots are mapped read-only on purpose (a leaf must not scribble on the
# root's memory); torch says once that it wraps a read-only array.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

CUDA_HOST_REGISTER_PORTABLE = 0x01
CUDA_HOST_REGISTER_READ_ONLY = 0x08


class ShmInbox:
    def __init__(self, max_message_bytes: int, device: str = "cpu", directory=None,
                 reap: bool = True):
        if reap:
            removed = reap_stale_segments(directory)
            if removed:
                log.info("removed %d stale shared-memory segment(s) of dead processes: %s",
                         len(removed), ", ".join(removed))
        self.max_message_bytes = max_message_bytes
        self.uid = os.geteuid()   # the one user whose roots may hand us segments
        self.pin = str(device).startswith("cuda")
        self.pinned: dict[str, int] = {}   # segment -> registered host address
        self.reader = SegmentReader(directory, on_attach=self._attached, on_drop=self._dropped)
        self._holds: dict[bytes, str] = {}
        self._uses: dict[str, int] = {}  # segment -> requests reading it
        self._lock = threading.Lock()
        self._new_segment = False

    # -- requests (I/O thread) ----------------------------------------------------

    def resolve(self, header: dict, body, compression: str, peer_uid: int | None):
        """``(buffer, pinned)`` for a request carrying an shm descriptor, from
        the ipc peer running as ``peer_uid`` (None: not an ipc peer, see
        `peer_uid`); ProtocolError naming what is wrong with it."""
        desc = header["shm"]
        if not isinstance(desc, dict):
            raise P.ProtocolError(P.BAD_REQUEST, "header field 'shm' must be an object "
                                                 "(segment, size, offset, nbytes)")
        if compression != P.COMPRESSION_NONE:
            raise P.ProtocolError(P.BAD_REQUEST, f"a shared-memory batch is never compressed, "
                                                 f"got compression {compression!r}")
        if len(body) != 1:
            raise P.ProtocolError(P.BAD_REQUEST, f"a shared-memory score request has 1 frame "
                                                 f"(header), got {len(body)}")
        peer = peer_uid
        if peer is None:
            raise P.ProtocolError(P.BAD_REQUEST, "shared-memory descriptors are accepted over "
                                                 "ipc:// links only (a tcp peer is not on this "
                                                 "node): send the batch as a frame")
        if peer != self.uid:
            raise P.ProtocolError(P.BAD_REQUEST, f"shared memory is for peers running as this "
                                                 f"leaf's user (uid {self.uid}), not uid {peer}: "
                                                 "send the batch as a frame")
        nbytes = desc.get("nbytes")
        if isinstance(nbytes, int) and nbytes > self.max_message_bytes:
            raise P.ProtocolError(P.TOO_LARGE, f"shm batch is {nbytes} bytes, limit "
                                               f"{self.max_message_bytes}")
        try:
            view = self.reader.view(desc, owner=peer)
        except ValueError as exc:
            raise P.ProtocolError(P.BAD_REQUEST, f"bad shm descriptor: {exc}") from None
        if self._new_segment:
            self._new_segment = False
            self.sweep(keep=desc["segment"])
        return view, desc["segment"] in self.pinned

    def hold(self, token: bytes, header: dict) -> None:
        """Request ``token`` reads the segment its header names until `release`."""
        name = header["shm"]["segment"]
        with self._lock:
            self._holds[token] = name
            self._uses[name] = self._uses.get(name, 0) + 1

    def release(self, token: bytes) -> None:
        with self._lock:
            name = self._holds.pop(token, None)
            if name is not None:
                left = self._uses[name] - 1
                if left:
                    self._uses[name] = left
                else:
                    del self._uses[name]

    def sweep(self, keep: str | None = None) -> list[str]:
        """Unmap segments of dead writers that no request uses."""
        dropped = []
        for name, _ in self.reader.segments():
            pid = owner_pid(name)
            if name == keep or pid is None or pid_alive(pid):
                continue
            with self._lock:
                if self._uses.get(name):
                    continue
            self.reader.forget(name)
            dropped.append(name)
        return dropped

    def close(self) -> None:
        self.reader.close()

    # -- pinned memory ---------------------------------------------------------------

    def _attached(self, name: str, view: memoryview) -> None:
        self._new_segment = True
        if not self.pin:
            return
        ptr = _address(view)
        flags = CUDA_HOST_REGISTER_PORTABLE | CUDA_HOST_REGISTER_READ_ONLY
        rc = register_host_memory(ptr, len(view), flags)
        if rc != 0:
            log.warning("cudaHostRegister of shared-memory segment %s failed (error %s); "
                        "its batches are staged through pinned memory instead", name, rc)
            return
        self.pinned[name] = ptr

    def _dropped(self, name: str, view: memoryview) -> None:
        ptr = self.pinned.pop(name, None)
        if ptr is not None:
            import torch
            torch.cuda.synchronize()  # no DMA may still read what is unregistered
            torch.cuda.cudart().cudaHostUnregister(ptr)


def peer_uid(frame) -> int | None:
    """The uid of the ipc peer that sent ``frame`` (a zmq.Frame received
    without copying), or None when it did not come over ipc."""
    return ipc_peer_uid(frame.get("Peer-Address"))


def _address(view: memoryview) -> int:
    arr = np.frombuffer(view, dtype=np.uint8)
    try:
        return arr.ctypes.data
    finally:
        del arr


def register_host_memory(ptr: int, nbytes: int, flags: int) -> int:
    """cudaHostRegister through torch; 0 on success, else the CUDA error code."""
    import torch
    rc = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, flags)
    return int(getattr(rc, "value", rc))


__all__ = ["ShmInbox", "peer_uid", "register_host_memory"]
