"""What a remote store hands back, checked before anything decodes it.

A Redis value is foreign bytes: anyone with write access, a bad loader or a
half-written key can leave a value that is no record of its source's layout
(the wrong length, ragged counts that disagree with its size, another
source's record, random bytes), or one larger than ``redis.max_value_bytes``.
Such a value is that entity's problem, never the
request's crash: it is counted as missing (``missing`` policy: default
values, or ``bad_request``), logged once per key naming the key and why,
and counted in ``trimmer_root_store_bad_records_total{source, reason}``.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from _trim.records.layout import LEN_PREFIX, RecordLayout

log = logging.getLogger("rootproc")

BAD_REASONS = ("corrupt", "too_large")
# Keys already logged, at most this many remembered (then each is logged again once).
LOGGED_KEYS = 10_000


def corrupt_records(layout: RecordLayout, records: Sequence) -> list[tuple[int, str]]:
    """(index, why) of each value in ``records`` (bytes, or None for absent)
    that is no record of ``layout``: what `_trim`'s decoders would refuse.
    Reads only each record's length and its ragged counts (a few bytes)."""
    size = layout.fixed_nbytes
    present = [(k, r) for k, r in enumerate(records) if r is not None]
    if not layout.ragged:
        return [(k, f"{len(r)} bytes, a {layout.source} record is {size}")
                for k, r in present if len(r) != size]
    bad = [(k, f"{len(r)} bytes, shorter than a {layout.source} record's fixed "
               f"{size}") for k, r in present if len(r) < size]
    rest = [(k, r) for k, r in present if len(r) >= size] if bad else present
    if not rest:
        return bad
    lo, hi, dtype, sizes = _counts_window(layout)
    window = np.frombuffer(b"".join([r[lo:hi] for _, r in rest]), dtype=dtype)
    counts = (window.reshape(len(rest), -1) if dtype.names is None else
              np.stack([window[name] for name in dtype.names], axis=1)).astype(np.int64)
    expected = size + ((counts * sizes + 7) & ~7).sum(axis=1)
    got = np.fromiter((len(r) for _, r in rest), dtype=np.int64, count=len(rest))
    for j in np.flatnonzero(expected != got).tolist():
        bad.append((rest[j][0], f"{int(got[j])} bytes, its ragged counts say {int(expected[j])}"))
    return bad


def _counts_window(layout: RecordLayout) -> tuple:
    """(first byte, end, dtype, item sizes): where a record's ragged counts
    lie in its fixed part, and how to read them (uint32s side by side in the
    usual case, else a structured dtype)."""
    window = getattr(layout, "_counts_window", None)
    if window is None:
        fields = [layout.dtype.fields[LEN_PREFIX + f.name] for f in layout.ragged]
        lo = min(off for _, off in fields)
        hi = max(off + dt.itemsize for dt, off in fields)
        offsets = [off - lo for _, off in fields]
        if all(dt == np.dtype("<u4") for dt, _ in fields) and offsets == list(
                range(0, 4 * len(fields), 4)):
            dtype: np.dtype = np.dtype("<u4")
        else:
            dtype = np.dtype({"names": [f"c{k}" for k in range(len(fields))],
                              "formats": [dt for dt, _ in fields], "offsets": offsets,
                              "itemsize": hi - lo})
        sizes = np.array([np.dtype(f.dtype).itemsize for f in layout.ragged], dtype=np.int64)
        window = layout._counts_window = (lo, hi, dtype, sizes)   # type: ignore[attr-defined]
    return window


class BadRecords:
    """Counts of refused values by (source, reason), and the keys already logged."""

    def __init__(self, where: str):
        self.where = where
        self.counts: dict[tuple[str, str], int] = {}
        self._logged: set[bytes] = set()
        self._lock = threading.Lock()

    def refuse(self, source: str, key: bytes, reason: str, why: str) -> None:
        with self._lock:
            self.counts[source, reason] = self.counts.get((source, reason), 0) + 1
            if key in self._logged:
                return
            if len(self._logged) >= LOGGED_KEYS:
                self._logged.clear()
            self._logged.add(key)
        log.warning("feature store %s: key %s refused (%s: %s); its entity counts as missing",
                    self.where, key.decode(errors="replace"), reason, why)


__all__ = ["BAD_REASONS", "BadRecords", "corrupt_records"]
