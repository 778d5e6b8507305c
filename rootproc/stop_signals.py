"""SIGINT, SIGTERM and SIGHUP as a stop request, for the commands that run
until stopped from the main thread (`trimmer demo`, `trimmer score`).

Each gets an explicit handler whatever the process inherited. Left to
Python's defaults, SIGTERM (what supervisord, systemd, docker and CI runners
send) and SIGHUP end the process before any cleanup runs, and SIGINT raises
KeyboardInterrupt only when the process did not start with SIGINT ignored:
a background job of a non-interactive shell, or anything under nohup, does,
and Ctrl-C then does nothing at all.

Every signal is recorded. The ``raise_on``-th (1: the first, 2: the second,
0: none) also raises `Stopped` in the main thread, wherever it is, and no
other one ever does: cleanup that runs after it cannot be cut short by the
next signal. `finish` runs a cleanup step to its end even when that one
`Stopped` lands inside it.
"""
from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that
    ``except Exception`` (a retried ping, say) does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """Handlers for STOP_SIGNALS while in use as a context manager; the ones
    the process had before come back on exit. Use from the main thread (the
    only one Python runs signal handlers in)."""

    def __init__(self, raise_on: int = 1,
                 on_signal: Callable[[int, int], None] | None = None):
        self.raise_on = raise_on
        self.on_signal = on_signal   # (signum, how many so far), before any raise
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def first(self) -> str | None:
        """The name of the first signal received, or None."""
        return signal.Signals(self.received[0]).name if self.received else None

    def _handle(self, signum: int, _frame) -> None:
        self.received.append(signum)
        if self.on_signal is not None:
            self.on_signal(signum, len(self.received))
        if len(self.received) == self.raise_on:
            raise Stopped(signum)

    def finish(self, step: Callable[[], object]) -> None:
        """Run ``step``; if the one `Stopped` interrupts it, run it again (no
        signal can interrupt that), then let the `Stopped` go on."""
        try:
            step()
        except Stopped:
            step()
            raise

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            # None: a handler Python did not install; the default is the nearest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # type: ignore[arg-type]
        self._previous.clear()


__all__ = ["STOP_SIGNALS", "Stopped", "StopSignals"]
