"""Liveness and readiness of one process, as its serving loop publishes them.

The HTTP thread (signatures/runtime/metrics_http.py) answers ``/livez`` and
``/readyz`` from a `Probes`; only the loop writes it. The loop calls `beat`
each time it turns and `set_ready` when what it serves changes: both only
assign a float or a tuple, so the HTTP thread never touches what the loop
runs and the loop never waits for it.

Live: the loop turned within ``stale_after_s`` (a loop stuck in a call, or
dead with the process still up, goes stale). Ready: what the loop last said,
and live (a stuck loop serves nothing, whatever it said before).
"""
from __future__ import annotations

import time

# A loop turns at least every 100 ms (the root's MAX_POLL_MS, the leaf's
# POLL_MS); ten seconds without a turn is a stuck loop on any machine.
STALE_AFTER_S = 10.0
# Bodies are short: a probe's answer goes into an orchestrator's event log.
MAX_REASON_CHARS = 1000


class Probes:
    def __init__(self, stale_after_s: float = STALE_AFTER_S, starting: str = "starting"):
        self.stale_after_s = stale_after_s
        self._beat = time.monotonic()
        self._ready: tuple[bool, str] = (False, starting)

    def beat(self, now: float | None = None) -> None:
        """The loop turned (``now``: its time.monotonic(), when it has one)."""
        self._beat = time.monotonic() if now is None else now

    def set_ready(self, ready: bool, why: str) -> None:
        """Ready or not, and why (one line, said in the probe's body)."""
        self._ready = (bool(ready), why)

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self._beat
        if age > self.stale_after_s:
            return False, (f"not live: the serving loop has not turned for {age:.1f}s "
                           f"(bound {self.stale_after_s:g}s)")
        return True, f"live: the serving loop turned {age:.3f}s ago"

    def ready(self) -> tuple[bool, str]:
        live, why = self.live()
        if not live:
            return False, why
        ready, why = self._ready
        return ready, short(f"{'ready' if ready else 'not ready'}: {why}")


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


__all__ = ["MAX_REASON_CHARS", "Probes", "STALE_AFTER_S", "short"]
