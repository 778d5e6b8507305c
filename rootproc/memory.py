"""What a request may hold of the root's memory, and what all of them may.

A score request holds, from its admission to its one reply: the raw records
it fetched, the batch built from them, and one message per model while that
message is in flight (docs/operations.md, "Memory per request", gives the
formula). `Scorer.admit` estimates it before anything is fetched, from the
column widths alone (`Linear`: a ragged column counts its offsets, not its
values, which no one knows before the fetch); once the batch is built,
`Scorer.begin_send` counts it again, ragged values included, before any
message is encoded. `MemoryBudget` holds the two caps:

- ``max_request_memory_nbytes``: a request estimated (or, once built,
  found) over it is refused ``too_large``, naming both numbers, before its
  fetch (or before any of its messages is encoded);
- ``max_memory_nbytes`` (default: half the node's physical memory): the
  requests in flight together. One that would pass it is refused
  ``overloaded`` at admission, unless nothing else is in flight (a request
  alone is held to the first limit only); bytes come back when a request
  is answered.

Every refusal is counted (``memory_refused_total``, by reason) and logged,
at most once per MEMORY_LOG_S per reason with the count of those not
logged since. Only the serving loop's thread uses a budget.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from _trim.format import ALIGN, FLAG_PER_REQUEST, FLAG_RAGGED, OFFSETS_DTYPE
from _trim.transport.protocol import OVERLOADED, TOO_LARGE, ProtocolError
from rootproc.defaults import MEMORY_SHARE

log = logging.getLogger("rootproc")

MEMORY_LOG_S = 10.0
REQUEST_LIMIT, ROOT_LIMIT = "request_limit", "root_limit"


@dataclass(frozen=True)
class Linear:
    """A message's (or batch's) bytes at ``n`` candidates, ragged values
    left out: at most ``fixed + per_row * n``."""

    fixed: int
    per_row: int

    def at(self, n: int) -> int:
        return self.fixed + self.per_row * n

    @classmethod
    def of(cls, layout, columns, table_nbytes: int) -> Linear:
        """The columns ``columns`` (indices) of ``layout``, after a header,
        column table and names of ``table_nbytes``."""
        cols = np.asarray(columns, dtype=np.int64)
        flags, widths, sizes = layout.flags[cols], layout.widths[cols], layout.itemsizes[cols]
        per_request = (flags & FLAG_PER_REQUEST) != 0
        ragged = (flags & FLAG_RAGGED) != 0
        off = OFFSETS_DTYPE.itemsize
        dense_row = np.where(ragged, off, widths * sizes)
        per_row = int(np.where(per_request, 0, dense_row).sum())
        fixed = np.where(per_request, dense_row + np.where(ragged, off, 0),
                         np.where(ragged, off, 0)) + (ALIGN - 1)
        return cls(int(table_nbytes) + int(fixed.sum()), per_row)


def root_memory_limit(cfg) -> int:
    """``max_memory_nbytes``, or MEMORY_SHARE of the node's physical memory."""
    if cfg.max_memory_nbytes is not None:
        return int(cfg.max_memory_nbytes)
    return int(MEMORY_SHARE * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class MemoryBudget:
    def __init__(self, request_limit: int, root_limit: int, refused, in_use_gauge):
        self.request_limit = request_limit
        self.root_limit = root_limit
        self.in_use = 0
        self._refused = refused        # Counter by reason
        self._gauge = in_use_gauge
        self._logged: dict[str, list] = {}   # reason -> [logged at, not logged since]

    def admit(self, rid: str, nbytes: int, what: str) -> int:
        """Reserve ``nbytes`` for request ``rid`` (``what``: how they add up);
        ProtocolError (too_large or overloaded) when it cannot have them."""
        if nbytes > self.request_limit:
            self.refuse(REQUEST_LIMIT, TOO_LARGE,
                        f"request {rid!r} needs an estimated {nbytes} bytes of root memory "
                        f"({what}), over the root's max_request_memory_nbytes "
                        f"{self.request_limit}: ask for fewer candidates or models",
                        nbytes=nbytes, limit=self.request_limit)
        if self.in_use and self.in_use + nbytes > self.root_limit:
            self.refuse(ROOT_LIMIT, OVERLOADED,
                        f"the root holds {self.in_use} bytes for the requests in flight; "
                        f"request {rid!r}'s estimated {nbytes} more would pass its "
                        f"max_memory_nbytes {self.root_limit}: retry shortly or on another root",
                        nbytes=nbytes, limit=self.root_limit, in_use=self.in_use)
        self.take(nbytes)
        return nbytes

    def check_built(self, rid: str, nbytes: int) -> None:
        """A built request's own bytes (ragged values now known) against the
        per-request limit; too_large when over it."""
        if nbytes > self.request_limit:
            self.refuse(REQUEST_LIMIT, TOO_LARGE,
                        f"request {rid!r} needs {nbytes} bytes of root memory for its batch and "
                        f"messages (ragged values included), over the root's "
                        f"max_request_memory_nbytes {self.request_limit}: ask for fewer "
                        f"candidates or models", nbytes=nbytes, limit=self.request_limit)

    def take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self._gauge.set(self.in_use)

    def release(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._gauge.set(self.in_use)

    def refuse(self, reason: str, kind: str, message: str, **details) -> None:
        self._refused.labels(reason).inc()
        now = time.monotonic()
        entry = self._logged.setdefault(reason, [float("-inf"), 0])
        if now - entry[0] >= MEMORY_LOG_S:
            more = (f" ({entry[1]} more like it in the last {now - entry[0]:.0f} s)"
                    if entry[1] else "")
            entry[0], entry[1] = now, 0
            log.warning("request refused %s (%s): %s%s", kind, reason, message, more)
        else:
            entry[1] += 1
        raise ProtocolError(kind, message, **details)


__all__ = ["Linear", "MemoryBudget", "root_memory_limit"]
