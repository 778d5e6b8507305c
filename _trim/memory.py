"""Large buffers reused by the allocator instead of mapped fresh for each request.

A root allocates a batch (MBs) and a payload per model message for every
request, a leaf a frame per message it receives. glibc's malloc serves
blocks above its mmap threshold (dynamic, from 128 KiB) with fresh mappings,
so every request pays a page fault per 4 KiB page touched and the kernel's
zeroing of it: measured at the demo's scale, 2,400–4,000 faults and a few
ms per request, more than the copies themselves. `keep_large_buffers`, run
once at a server process's start, raises the threshold to glibc's maximum
(32 MiB: larger blocks still get their own mapping) and keeps freed memory
for the next request instead of returning it to the system at once, so that
steady-state requests reuse warm, already-mapped pages. Elsewhere than glibc
it does nothing.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_NBYTES = 32 << 20    # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD_NBYTES = 256 << 20   # free memory kept above the heap's top before trimming


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


__all__ = ["keep_large_buffers"]
