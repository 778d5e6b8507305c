"""Stop signals for every command that runs until it is stopped.

Each gets an explicit handler whatever the process inherited. Left to
Python's defaults, SIGTERM (what supervisord, systemd, docker and CI runners
send) and SIGHUP end the process before any cleanup runs, and SIGINT raises
KeyboardInterrupt only when the process did not start with SIGINT ignored:
a background job of a non-interactive shell, or anything under nohup, does,
and Ctrl-C then does nothing at all.

`StopSignals` (`trimmer demo`, `trimmer score`): SIGINT, SIGTERM and SIGHUP
are recorded; the ``raise_on``-th (1: the first, 2: the second, 0: none)
also raises `Stopped` in the main thread, wherever it is, and no other one
ever does: cleanup that runs after it cannot be cut short by the next
signal. `finish` runs a cleanup step to its end even when that one `Stopped`
lands inside it. The kernel may hand a process-wide signal to any thread
that does not block it (numpy's and pyzmq's threads do not), and Python runs
the handler only once the main thread next executes Python code: a main
thread blocked in a poll would not notice for as long as the poll lasts. So
`wakeup` is a socket that becomes readable on every signal, whichever thread
took it (``signal.set_wakeup_fd``): a loop that polls it as well wakes at once.

`DeferredStop` (`trimmer root`, `trimmer leaf`): SIGTERM and SIGINT from the
first line of ``main``, while the server is still being built (sockets
bound, rings made), held until the server exists and then handed to its own
drain, so a process stopped as it starts still exits 0 and leaves nothing.
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
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
        self._arrivals = itertools.count(1)
        self._previous: dict[int, object] = {}
        self.wakeup: socket.socket | None = None   # readable after a signal, while in use
        self._wakeup_writer: socket.socket | None = None
        self._previous_wakeup = -1

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def first(self) -> str | None:
        """The name of the first signal received, or None."""
        return signal.Signals(self.received[0]).name if self.received else None

    def _handle(self, signum: int, _frame) -> None:
        # The next signal's handler may run inside this one (Python checks for
        # signals after every call), so this one's place is taken in one step
        # and kept, whatever the list holds by the check below.
        count = next(self._arrivals)
        self.received.insert(count - 1, signum)
        if self.on_signal is not None:
            self.on_signal(signum, count)
        if count == self.raise_on:
            raise Stopped(signum)

    def finish(self, step: Callable[[], object]) -> None:
        """Run ``step``; if the one `Stopped` interrupts it, run it again (no
        signal can interrupt that), then let the `Stopped` go on."""
        try:
            step()
        except Stopped:
            step()
            raise

    def drain_wakeup(self) -> None:
        """Empty `wakeup` (after a poll said it is readable)."""
        if self.wakeup is None:
            return
        try:
            while self.wakeup.recv(512):
                pass
        except BlockingIOError:
            pass

    def __enter__(self) -> StopSignals:
        self.wakeup, self._wakeup_writer = socket.socketpair()
        for sock in (self.wakeup, self._wakeup_writer):
            sock.setblocking(False)
        self._previous_wakeup = signal.set_wakeup_fd(self._wakeup_writer.fileno(),
                                                     warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            # None: a handler Python did not install; the default is the nearest.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # type: ignore[arg-type]
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_wakeup)
        for sock in (self.wakeup, self._wakeup_writer):
            if sock is not None:
                sock.close()
        self.wakeup = self._wakeup_writer = None


def say(text: str) -> None:
    """A line on stderr from inside a signal handler: with os.write, since a
    print there could land inside one the main thread is in the middle of,
    and never raising (a closed stderr must not replace `Stopped`)."""
    try:
        os.write(2, f"{text}\n".encode())
    except OSError:
        pass


class DeferredStop:
    """SIGTERM and SIGINT handlers for a server's start: the first is held
    until `hand_to` names the server's stop, which then gets it (and every
    later one). A second while still starting ends the process as the signal
    would by default: a start that hangs can still be cut short."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.pending: int | None = None
        self._stop: Callable[[], object] | None = None

    def install(self) -> DeferredStop:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        if self._stop is not None:
            self._stop()
        elif self.pending is None:
            self.pending = signum
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def hand_to(self, stop: Callable[[], object]) -> None:
        """From now on a stop signal calls ``stop``; one held already does so now."""
        self._stop = stop
        if self.pending is not None:
            stop()


__all__ = ["STOP_SIGNALS", "Stopped", "StopSignals", "DeferredStop", "say"]
