"""Shared-memory transport for same-node leaf links (the root's side).

Per leaf link with shm on, the root owns one `SlotRing` in /dev/shm. The
gather kernel writes a trimmed batch straight into a free slot; the score
request then carries a descriptor (``"shm": {...}``) instead of a payload
frame. The zmq messages are the only synchronisation:

* a slot is held from the request that names it until the leaf's reply to
  that request arrives, even when the request's deadline passed long before
  (the leaf may still be reading it);
* each held slot is tagged with the leaf pid (from pongs) it was sent to;
  slots of a process that no longer exists are reclaimed at the next health
  tick: a dead process reads nothing. Slots sent while no live leaf is known
  (before the first pong, or after the leaf died and before its successor's
  pong) are tagged with the next pid learnt: a restarted leaf needs seconds
  to bind, far more than a tick, so they went to the successor.

A batch larger than a slot takes a run of contiguous slots (`SlotRing`),
held and freed as one. A batch larger than the whole ring (``too_large``), no
run freeing up within ``wait_ms`` (``no_slot``; meanwhile the link's replies
are read, since only they free slots), or a /dev/shm too full to reserve a
run's pages on first use (``no_memory``) goes over the socket as usual and
counts in ``trimmer_root_shm_fallback_total``, logged rate-limited.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge

import _trim
from _trim.errors import ShmUnavailable
from _trim.transport.process import pid_alive
from _trim.transport.shm import SlotRing
from rootproc.settings import ShmSettings

log = logging.getLogger("rootproc")

FALLBACK_LOG_S = 60.0   # a fallback reason is logged at most this often per link


def wants_shm(endpoint: str, transport: str, cfg: ShmSettings) -> bool:
    """Whether a link uses shared memory: forced, or auto for a local (ipc) leaf."""
    if transport == "shm":
        return True
    return transport == "auto" and cfg.enabled and endpoint.startswith("ipc://")


class ShmChannel:
    """One link's ring and the slots the leaf holds, by request id."""

    def __init__(self, label: str, cfg: ShmSettings, fallbacks=None, where: str = ""):
        self.ring = SlotRing(label, cfg.slot_bytes, cfg.slots)
        self.where = where or f"leaf {label}"   # the link, for the log
        self._logged: dict[str, tuple[float | None, int]] = {}  # reason -> (last line, unlogged)
        self.wait_s = cfg.wait_ms / 1000
        self.held: dict[str, tuple[int, int | None]] = {}  # request id -> (slot, leaf pid then)
        self.leaf_pid: int | None = None
        self._dead: set[int | None] = set()  # leaf pids seen gone (a link's pid lags behind until a pong)
        self.fallbacks = fallbacks  # reason -> counter (or None)

    def place(self, mid: str, plan, batch, nbytes: int, read_replies=None,
              what: str = "") -> dict | None:
        """Encode ``batch`` (of model version ``what``) into a slot held for
        ``mid``; its descriptor, or None when the caller must send over the
        socket. ``read_replies(timeout_s)`` reads the link's replies while
        waiting for a slot: only they free one."""
        ring = self.ring
        if nbytes > ring.nbytes:
            self._fallback("too_large", f"a {nbytes}-byte batch of {what} is larger than the "
                                        f"shared-memory ring ({ring.n_slots} slots of "
                                        f"{ring.slot_nbytes} bytes)")
            return None
        count = ring.slots_for(nbytes)
        try:
            slot = ring.acquire(count=count)
            if slot is None and self.wait_s > 0:
                deadline = time.monotonic() + self.wait_s
                while slot is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if read_replies is not None:
                        read_replies(left)
                        slot = ring.acquire(count=count)
                    else:
                        slot = ring.acquire(timeout=left, count=count)
        except ShmUnavailable as exc:   # /dev/shm too full to reserve the run's pages
            self._fallback("no_memory", f"{exc} (a batch of {what})")
            return None
        if slot is None:
            run = f"{count} contiguous slots" if count > 1 else "a slot"
            self._fallback("no_slot", f"no shared-memory run of {run} (of {ring.n_slots}, "
                                      f"{ring.free_slots} free) came free within "
                                      f"{self.wait_s * 1000:g} ms for a {nbytes}-byte batch "
                                      f"of {what}")
            return None
        try:
            written = _trim.encode_into(plan, batch, ring.slot(slot))
        except BaseException:
            ring.release(slot)
            raise
        self.held[mid] = (slot, self.leaf_pid)
        return ring.descriptor(slot, written)

    def replied(self, mid) -> int:
        """The leaf answered ``mid``: its run of slots is free again. Returns
        how many slots that freed (0: ``mid`` held none)."""
        entry = self.held.pop(mid, None)
        if entry is None:
            return 0
        count = self.ring.run_length(entry[0])
        self.ring.release(entry[0])
        return count

    @property
    def held_slots(self) -> int:
        """Slots the leaf may still be reading (every slot of each held run)."""
        return self.ring.held_slots

    def unsent(self, mid: str) -> None:
        """The request naming the slot never left: nobody reads it."""
        self.replied(mid)

    def check_leaf(self, pid) -> int:
        """Called each health tick with the pid the leaf last reported; reclaims
        the slots held by leaf processes that are gone. Returns how many
        slots (a run counts each of its slots)."""
        if pid in self._dead or (pid is not None and not pid_alive(pid)):
            self._dead.add(pid)
            pid = None  # no live leaf known: what is sent now goes to its successor
        self.leaf_pid = pid
        if pid is not None and any(owner is None for _, owner in self.held.values()):
            self.held = {mid: (slot, pid if owner is None else owner)
                         for mid, (slot, owner) in self.held.items()}
        dead = [mid for mid, (_, owner) in self.held.items()
                if owner is not None and (owner in self._dead or not pid_alive(owner))]
        freed = 0
        for mid in dead:
            self._dead.add(self.held[mid][1])
            freed += self.replied(mid)
        return freed

    def _fallback(self, reason: str, why: str) -> None:
        """Counted always; logged the first time, then at most once per
        FALLBACK_LOG_S per reason, with how many went unlogged meanwhile."""
        if self.fallbacks is not None:
            self.fallbacks.labels(reason).inc()
        now = time.monotonic()
        last, quiet = self._logged.get(reason, (None, 0))
        if last is not None and now - last < FALLBACK_LOG_S:
            self._logged[reason] = (last, quiet + 1)
            return
        self._logged[reason] = (now, 0)
        more = f" ({quiet} more since the last such line)" if quiet else ""
        log.warning("%s: %s: sent over the socket%s", self.where, why, more)

    def close(self) -> None:
        self.held.clear()
        self.ring.close()


class ShmLinks:
    """The root's shm channels, one per leaf link that uses shared memory."""

    def __init__(self, links, cfg: ShmSettings, transports: dict, registry=None):
        self.cfg = cfg
        self.fallback_total = self.sent_total = self.reclaimed_total = self.held_slots = None
        if registry is not None:
            p = "trimmer_root_shm_"
            self.fallback_total = Counter(p + "fallback", "batches for a shm link sent over the "
                                          "socket instead", ["leaf", "reason"], registry=registry)
            self.sent_total = Counter(p + "sent", "batches written into a shared-memory slot",
                                      ["leaf"], registry=registry)
            self.reclaimed_total = Counter(p + "reclaimed", "slots reclaimed from a leaf process "
                                           "that is gone", ["leaf"], registry=registry)
            self.held_slots = Gauge(p + "slots_held", "slots a leaf holds (sent, no reply yet)",
                                    ["leaf"], registry=registry)
        self.channels: dict = {}
        try:
            for link in links:
                self.add(link, transports.get(link.name, "auto"))
        except BaseException:
            self.close()
            raise

    def add(self, link, transport: str = "auto") -> None:
        """A channel for ``link`` if it uses shared memory (a link added while serving)."""
        if link not in self.channels and wants_shm(link.endpoint, transport, self.cfg):
            fb = None if self.fallback_total is None else _Labelled(self.fallback_total, link.name)
            self.channels[link] = ShmChannel(link.name, self.cfg, fb,
                                             f"leaf {link.name} ({link.endpoint})")

    def describe(self, link) -> dict:
        """How ``link``'s batches travel, for the root's pong and heartbeat."""
        ch = self.channels.get(link)
        if ch is None:
            return {"transport": "socket"}
        return {"transport": "shm", "shm": {"slots": ch.ring.n_slots, "slot_bytes": ch.ring.slot_nbytes,
                                            "held": ch.held_slots}}

    def holds(self, link) -> int:
        """Slots the leaf of ``link`` may still be reading."""
        ch = self.channels.get(link)
        return 0 if ch is None else ch.held_slots

    def remove(self, link) -> None:
        """Release ``link``'s ring (a retired link): its leaf reads no slot any more,
        or whatever it still reads belongs to requests answered at their deadline."""
        ch = self.channels.pop(link, None)
        if ch is not None:
            ch.close()
            if self.held_slots is not None:
                try:
                    self.held_slots.remove(link.name)
                except KeyError:
                    pass

    def channel(self, link) -> ShmChannel | None:
        return self.channels.get(link)

    def sent(self, link) -> None:
        if self.sent_total is not None:
            self.sent_total.labels(link.name).inc()

    def replied(self, link, mid) -> None:
        ch = self.channels.get(link)
        if ch is not None:
            ch.replied(mid)

    def check_leaves(self) -> None:
        for link, ch in self.channels.items():
            n = ch.check_leaf(link.pid)
            if n and self.reclaimed_total is not None:
                self.reclaimed_total.labels(link.name).inc(n)
            if self.held_slots is not None:
                self.held_slots.labels(link.name).set(ch.held_slots)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()


class _Labelled:
    """A counter with its leaf label fixed; ``.labels(reason)`` completes it."""

    def __init__(self, counter, leaf: str):
        self.counter, self.leaf = counter, leaf

    def labels(self, reason: str):
        return self.counter.labels(self.leaf, reason)


__all__ = ["ShmChannel", "ShmLinks", "wants_shm"]
