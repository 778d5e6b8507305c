"""Shared-memory slots for same-node links: the root writes a batch straight
into a slot, only a small descriptor crosses the ipc socket, and the leaf
decodes in place.

The writer (root) owns one segment per link: a ring of fixed-size slots in
``/dev/shm``. The zmq messages are the only synchronisation: a slot is handed
to the leaf by the request that names it and handed back by the leaf's reply,
so no shared flag, and no memory ordering that Python cannot promise, is
involved. Segments are plain files mapped with mmap rather than
`multiprocessing.shared_memory`, whose resource tracker unlinks or warns
about segments that outlive the process that opened them.

Names are ``trimmer-<pid>-<label>-<random>``: the owner's pid lets a restarted
process (or anyone) remove the segments of a process that died by kill -9.
"""
from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from stat import S_IMODE, S_ISREG, S_IWGRP, S_IWOTH

from ..errors import ShmUnavailable
from .process import pid_alive

SHM_DIR = Path(os.environ.get("TRIMMER_SHM_DIR", "/dev/shm"))
PREFIX = "trimmer-"
_NAME = re.compile(r"^trimmer-(\d+)-[A-Za-z0-9_.]{1,64}-[0-9a-f]{8}$")


def owner_pid(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def reap_stale_segments(directory: Path | None = None) -> list[str]:
    """Unlink the segments whose owning process is gone; returns their names."""
    directory = Path(directory or SHM_DIR)
    removed: list[str] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return removed
    for path in entries:
        pid = owner_pid(path.name)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            try:
                path.unlink()
                removed.append(path.name)
            except FileNotFoundError:
                pass
    return removed


def _open_segment(path: Path, name: str, owner: int) -> int:
    """A read-only descriptor of the segment file at ``path``, if it is one
    ``owner`` wrote; ValueError saying why not, never what the file holds."""
    try:
        # O_NOFOLLOW: never a symlink planted under a segment name; O_NONBLOCK:
        # a FIFO planted there must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"shm segment {name} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"shm segment {name} is a symbolic link: refused") from None
        raise ValueError(f"shm segment {name} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            raise ValueError(f"shm segment {name} is not a regular file")
        if st.st_uid != owner:
            raise ValueError(f"shm segment {name} is owned by uid {st.st_uid}, not by its "
                             f"writer's uid {owner}")
        if st.st_mode & (S_IWGRP | S_IWOTH):
            raise ValueError(f"shm segment {name} is writable by group or others "
                             f"(mode {S_IMODE(st.st_mode):o})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def ipc_peer_uid(peer_address: str | None) -> int | None:
    """The uid of the process at the other end of an ipc connection, from a
    message's ``Peer-Address`` property (libzmq gives ``localhost:UID:GID:PID``
    for a unix socket, from SO_PEERCRED, and a numeric address for tcp);
    None when the message did not come over ipc."""
    if not peer_address or not peer_address.startswith("localhost:"):
        return None
    parts = peer_address.split(":")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1])


# Linux >= 5.14; Python 3.11's mmap module does not name it.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _populate_for_writing(mapped: mmap.mmap, start: int, length: int) -> None:
    """Map the pages of ``mapped[start:start+length]`` writable now.
    posix_fallocate reserved them but this process has no page-table entries
    for them yet, so the first write into each 4 KiB page would fault (write
    faults get no fault-around): ~3 ms for a fresh 8 MiB slot on tmpfs, paid
    by the first request through it. An older kernel refuses the advice, and
    the pages then fault on first use as before."""
    try:
        mapped.madvise(MADV_POPULATE_WRITE, start, length)
    except OSError:
        pass


class SlotRing:
    """Writer side: a segment of ``n_slots`` slots of ``slot_nbytes`` each.
    The file is sparse: a slot's pages are reserved and mapped the first time
    a run uses it (`_reserve`), so the ring costs memory for the slots used
    so far, at most its size.

    A message larger than a slot takes a **run** of contiguous slots: it is
    held, and released, by its first slot's index. A run never wraps past
    the segment's end (the leaf reads one range). Each acquire is one scan of
    the slots (C-speed `bytearray.find` over the busy map): the smallest free
    extent that fits (the big ones stay whole for big messages), at the edge
    nearest its most recently freed slot (the warmest pages and cache lines:
    a gather into the slot freed last took 0.49 ms where cycling through 16
    took 0.79), so a steady stream of same-sized messages keeps reusing the
    same runs."""

    def __init__(self, label: str, slot_nbytes: int, n_slots: int, directory: Path | None = None):
        if slot_nbytes <= 0 or n_slots <= 0:
            raise ValueError(f"slot size and count must be positive, got {slot_nbytes} x {n_slots}")
        slot_nbytes = (slot_nbytes + 63) & ~63  # slots on cache-line boundaries
        label = re.sub(r"[^A-Za-z0-9_.]", "_", label)[:64] or "ring"
        self.directory = Path(directory or SHM_DIR)
        self.slot_nbytes = slot_nbytes
        self.n_slots = n_slots
        self.nbytes = slot_nbytes * n_slots
        self.name = f"{PREFIX}{os.getpid()}-{label}-{secrets.token_hex(4)}"
        self.path = self.directory / self.name
        try:
            stat = os.statvfs(self.directory)
        except FileNotFoundError:
            raise ShmUnavailable(f"shared-memory directory {self.directory} does not exist") from None
        free = stat.f_bavail * stat.f_frsize
        if self.nbytes > free:
            raise ShmUnavailable(
                f"{self.directory} has {free / 2**20:.0f} MiB free, the ring needs "
                f"{self.nbytes / 2**20:.0f} MiB ({n_slots} slots x {slot_nbytes} bytes); "
                f"lower the slot size or count, or enlarge {self.directory}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Sparse: tmpfs pages cost memory once reserved, which `_reserve`
            # does for a run when it is first used.
            os.ftruncate(fd, self.nbytes)
            self._map = mmap.mmap(fd, self.nbytes)
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise ShmUnavailable(f"cannot allocate {self.nbytes} bytes in {self.directory}: {exc}") from None
        self._fd = fd
        self._view = memoryview(self._map)
        self._ready = bytearray(n_slots)    # 1 where the slot's pages are reserved and mapped
        self._busy = bytearray(n_slots)     # 1 where a held run covers the slot
        self._runs: dict[int, int] = {}     # first slot of each held run -> its length
        self._stamp = [0] * n_slots         # when each slot was last freed (higher: warmer)
        self._clock = 0
        self._held = 0
        self._cond = threading.Condition()
        self._closed = False

    def slots_for(self, nbytes: int) -> int:
        """How many contiguous slots a message of ``nbytes`` takes."""
        return max(1, -(-nbytes // self.slot_nbytes))

    def acquire(self, timeout: float = 0.0, count: int = 1) -> int | None:
        """The first slot of a run of ``count`` contiguous free slots, or None
        if none frees up within ``timeout`` seconds (never for a run longer
        than the ring)."""
        if count < 1:
            raise ValueError(f"a run is at least one slot, got {count}")
        with self._cond:
            start = self._find(count)
            if start is None and timeout > 0 and count <= self.n_slots:
                self._cond.wait_for(lambda: self._closed or self._find(count) is not None, timeout)
                start = self._find(count)
            if self._closed or start is None:
                return None
            if self._ready.find(0, start, start + count) >= 0:
                self._reserve(start, count)
            self._busy[start:start + count] = b"\x01" * count
            self._runs[start] = count
            self._held += count
            return start

    def _reserve(self, start: int, count: int) -> None:
        """Reserve and map the pages of slots ``start..start+count`` (lock
        held), the first time they are used: posix_fallocate, so that a full
        /dev/shm is a clear ShmUnavailable here instead of SIGBUS on the first
        write, and `_populate_for_writing`."""
        lo, hi = start * self.slot_nbytes, (start + count) * self.slot_nbytes
        try:
            os.posix_fallocate(self._fd, lo, hi - lo)
        except OSError as exc:
            raise ShmUnavailable(f"cannot reserve {hi - lo} bytes of {self.path} for slots "
                                 f"{start}..{start + count - 1}: {exc.strerror}") from None
        page = lo - lo % mmap.PAGESIZE
        _populate_for_writing(self._map, page, hi - page)
        self._ready[start:start + count] = b"\x01" * count

    @property
    def reserved_bytes(self) -> int:
        """Bytes of the ring reserved so far (what it costs in memory)."""
        return self._ready.count(1) * self.slot_nbytes

    def _find(self, count: int) -> int | None:
        """Where a run of ``count`` goes now (lock held), or None."""
        if self._closed or count > self.n_slots - self._held:
            return None
        busy, n = self._busy, self.n_slots
        best: tuple[int, int] | None = None   # (extent length, -warmth)
        where = None
        i = busy.find(0)
        while 0 <= i < n:
            j = busy.find(1, i)
            if j < 0:
                j = n
            length = j - i
            if length >= count and (best is None or length <= best[0]):
                stamps = self._stamp[i:j]
                warmth = max(stamps)
                if best is None or (length, -warmth) < best:
                    best = (length, -warmth)
                    warm_at = i + stamps.index(warmth)
                    # the edge of the extent nearer its warmest slot: an extent
                    # is never split in two
                    where = j - count if warm_at - i > j - 1 - warm_at else i
                    if length == count and warmth == self._clock:
                        break   # the run freed last, exactly: nothing beats it
            i = busy.find(0, j)
        return where

    def release(self, slot: int) -> None:
        """Free the run that starts at ``slot`` (all of its slots)."""
        with self._cond:
            count = self._runs.pop(slot, None)
            if count is None:
                raise ValueError(f"slot {slot} does not start a held run of this ring")
            self._busy[slot:slot + count] = bytes(count)
            self._clock += 1
            self._stamp[slot:slot + count] = [self._clock] * count
            self._held -= count
            self._cond.notify_all()   # waiters want runs of different lengths

    def run_length(self, slot: int) -> int:
        """Slots in the held run that starts at ``slot`` (0: none starts there)."""
        return self._runs.get(slot, 0)

    @property
    def free_slots(self) -> int:
        return self.n_slots - self._held

    @property
    def held_slots(self) -> int:
        return self._held

    def slot(self, slot: int) -> memoryview:
        """Writable view of the held run that starts at ``slot`` (one slot
        where none starts there)."""
        start = slot * self.slot_nbytes
        return self._view[start:start + max(1, self._runs.get(slot, 1)) * self.slot_nbytes]

    def descriptor(self, slot: int, nbytes: int) -> dict:
        room = max(1, self._runs.get(slot, 1)) * self.slot_nbytes
        if nbytes > room:
            raise ValueError(f"{nbytes} bytes do not fit the {room} bytes at slot {slot}")
        return {"segment": self.name, "size": self.nbytes,
                "offset": slot * self.slot_nbytes, "nbytes": nbytes, "slot": slot}

    def close(self) -> None:
        """Unmap and unlink. Slot views handed out must be released first."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._view.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with the process
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SegmentReader:
    """Reader side: maps writers' segments on first use, read-only.

    A descriptor is foreign input naming a file in a world-writable directory,
    so a segment is opened only as a regular file that is no symbolic link
    (``O_NOFOLLOW``), owned by the uid the caller says wrote it, and writable
    by nobody else; an error never quotes what the file holds. The file stays
    open while it is mapped, and its size is checked before every use: a
    mapping read past the end of a file truncated since (by its owner: no
    one else can) would SIGBUS the reader.

    A writer that died leaves its segment unlinked (by its successor's reap)
    but still mapped here; `forget` drops it, and the cache is bounded so
    segments of long-gone writers do not accumulate.
    """

    def __init__(self, directory: Path | None = None, max_segments: int = 64, on_attach=None, on_drop=None):
        self.directory = Path(directory or SHM_DIR)
        self.max_segments = max_segments
        # Called with (name, view) under the reader's lock, e.g. to register a
        # segment as pinned memory once, and to unregister it before unmapping.
        self.on_attach, self.on_drop = on_attach, on_drop
        self._segments: OrderedDict[str, tuple[mmap.mmap, memoryview, int]] = OrderedDict()
        self._lock = threading.Lock()

    def view(self, descriptor: dict, owner: int | None = None) -> memoryview:
        """The bytes a descriptor names in a segment of user ``owner`` (default:
        this process's); ValueError naming what is wrong."""
        try:
            name, size = descriptor["segment"], descriptor["size"]
            offset, nbytes = descriptor["offset"], descriptor["nbytes"]
        except (KeyError, TypeError):
            raise ValueError("shm descriptor needs segment, size, offset and nbytes") from None
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"shm segment name {name!r} is not a trimmer segment")
        for field, value in (("size", size), ("offset", offset), ("nbytes", nbytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"shm descriptor field {field!r} must be a non-negative integer")
        view = self._attach(name, size, os.geteuid() if owner is None else owner)
        if offset > len(view) or nbytes > len(view) - offset:
            raise ValueError(f"shm descriptor range {offset}+{nbytes} is outside "
                             f"segment {name} ({len(view)} bytes)")
        return view[offset:offset + nbytes]

    def _attach(self, name: str, size: int, owner: int) -> memoryview:
        with self._lock:
            entry = self._segments.get(name)
            if entry is not None and len(entry[1]) == size:
                now = os.fstat(entry[2]).st_size
                if now != size:
                    self._drop(name)
                    raise ValueError(f"shm segment {name} is now {now} bytes, {size} when "
                                     "mapped: truncated under this reader")
                self._segments.move_to_end(name)
                return entry[1]
            if entry is not None:
                self._drop(name)
            fd = _open_segment(self.directory / name, name, owner)
            try:
                actual = os.fstat(fd).st_size
                if actual != size:
                    raise ValueError(f"shm segment {name} is {actual} bytes, descriptor says {size}")
                try:
                    mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
                except OSError as exc:
                    raise ValueError(f"shm segment {name} cannot be mapped: {exc.strerror}") from None
            except BaseException:
                os.close(fd)
                raise
            view = memoryview(mapped)
            self._segments[name] = (mapped, view, fd)
            if self.on_attach is not None:
                self.on_attach(name, view)
            while len(self._segments) > self.max_segments:
                self._drop(next(iter(self._segments)))
            return view

    def segments(self) -> list[tuple[str, memoryview]]:
        with self._lock:
            return [(name, view) for name, (_, view, _) in self._segments.items()]

    def forget(self, name: str) -> None:
        with self._lock:
            if name in self._segments:
                self._drop(name)

    def _drop(self, name: str) -> None:
        mapped, view, fd = self._segments.pop(name)
        os.close(fd)
        if self.on_drop is not None:
            self.on_drop(name, view)
        view.release()
        try:
            mapped.close()
        except BufferError:
            pass  # arrays still reference it; unmapped when they are collected

    def close(self) -> None:
        with self._lock:
            for name in list(self._segments):
                self._drop(name)
