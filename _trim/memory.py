"""Large buffers reused instead of mapped fresh for each request.

A root allocates a batch (MBs to GBs) and a payload per model message for
every request, a leaf a frame per message it receives. glibc's malloc serves
blocks above its mmap threshold (dynamic, from 128 KiB) with fresh mappings,
so every request pays a page fault per page touched and the kernel's zeroing
of it: measured at the demo's scale, 2,400–4,000 faults and a few ms per
request, more than the copies themselves; at 32 MiB a fresh buffer costs
twice a copy into a warm one; a model's forward in a leaf likewise
re-faults its activations every batch when its thread's heap is trimmed
between batches. Two remedies, run once at a process's start (the root
both, a leaf the first):

- `keep_large_buffers` raises glibc's threshold to its maximum (32 MiB) and
  keeps freed memory for the next request instead of returning it to the
  system at once, so that blocks up to 32 MiB reuse warm, mapped pages.
  Elsewhere than glibc it does nothing.
- `install_pool(max_bytes)` keeps buffers of 32 MiB and more, which glibc
  always maps afresh, in a process-wide `LargeBufferPool`: `empty(nbytes)`
  (what `Batch` and the root's message encoder allocate with) hands out a
  free pooled buffer when one fits. A buffer is free again when nothing
  refers to it any more: its request dropped its batch, ZeroMQ let go of a
  payload it sent without copying. The pool never holds more than
  ``max_bytes``; past that, buffers are plain fresh arrays, as without it.

Pooled buffers come back with the previous request's bytes in them: only
writers that write every byte they hand on use `empty` (the record program
and the gather kernel write every column, and the padding, of what they make).
"""
from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_NBYTES = 32 << 20    # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD_NBYTES = 256 << 20   # free memory kept above the heap's top before trimming
POOLED_MIN_NBYTES = MMAP_THRESHOLD_NBYTES   # smaller blocks glibc already reuses
POOL_GRAIN = 2 << 20                # pooled sizes: whole transparent huge pages
POOL_SLACK = 2                      # a request is served a pooled buffer at most this many times its size


def keep_large_buffers() -> bool:
    """Tune this process's malloc as the module docstring says; whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_NBYTES) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_NBYTES) == 1 and ok)


def _unreferenced(buffers: list, i: int) -> bool:
    """Whether only the pool's list refers to ``buffers[i]``: no view of it
    is alive (numpy views refer to the array that owns the memory)."""
    # The list's reference and getrefcount's own argument.
    return sys.getrefcount(buffers[i]) <= 2


class LargeBufferPool:
    """Buffers of at least `POOLED_MIN_NBYTES`, at most ``max_bytes`` of them
    in all, each handed out again once nothing refers to it (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0       # buffers served from the pool
        self.fresh = 0        # buffers the pool had to map (kept, or past its size)

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds, free or handed out."""
        return sum(b.nbytes for b in self._buffers)

    def empty(self, nbytes: int) -> np.ndarray:
        """An uninitialised uint8 array of ``nbytes``."""
        if nbytes < POOLED_MIN_NBYTES:
            return np.empty(nbytes, dtype=np.uint8)
        with self._lock:
            buffers = self._buffers
            best = -1
            for i in range(len(buffers)):
                size = buffers[i].nbytes
                if (nbytes <= size <= POOL_SLACK * nbytes and _unreferenced(buffers, i)
                        and (best < 0 or size < buffers[best].nbytes)):
                    best = i
            if best >= 0:
                self.reused += 1
                return buffers[best][:nbytes]
            self.fresh += 1
            size = -(-nbytes // POOL_GRAIN) * POOL_GRAIN
            held = sum(b.nbytes for b in buffers)
            # Make room by dropping free buffers that did not fit, largest first.
            for i in sorted(range(len(buffers)), key=lambda k: -buffers[k].nbytes):
                if held + size <= self.max_bytes:
                    break
                if _unreferenced(buffers, i):
                    held -= buffers[i].nbytes
                    buffers[i] = None   # type: ignore[call-overload]
            self._buffers = buffers = [b for b in buffers if b is not None]
            if held + size > self.max_bytes:
                return np.empty(nbytes, dtype=np.uint8)
            buf = np.empty(size, dtype=np.uint8)
            buffers.append(buf)
            return buf[:nbytes]


_pool: LargeBufferPool | None = None


def install_pool(max_bytes: int) -> LargeBufferPool | None:
    """Serve this process's large buffers from a pool of at most
    ``max_bytes`` (0: no pool, every buffer fresh); the pool, if any."""
    global _pool
    _pool = LargeBufferPool(max_bytes) if max_bytes > 0 else None
    return _pool


def empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes``: from the process's pool
    when one is installed, else fresh. Only for writers that write every byte."""
    pool = _pool
    if pool is None:
        return np.empty(nbytes, dtype=np.uint8)
    return pool.empty(nbytes)


__all__ = ["LargeBufferPool", "empty", "install_pool", "keep_large_buffers"]
