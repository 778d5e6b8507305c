"""What the real servers tests start (Redis, ZooKeeper) have in common.

`require` skips a test whose server is not installed, or fails it under
TRIMMER_TEST_SERVICES=required (CI must not pass by skipping them).
`ServerProcess` is one server process on a port of its own: started and
waited for until it serves, killed or stopped, and a context manager
(``with RedisServer(tmp) as server:``) that stops it on the way out.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest


def require(installed: bool, reason: str) -> None:
    if installed:
        return
    if os.environ.get("TRIMMER_TEST_SERVICES") == "required":
        pytest.fail(reason + " and TRIMMER_TEST_SERVICES=required")
    pytest.skip(reason)


class ServerProcess:
    """Subclasses say how to launch (`_popen`), probe (`serving`) and show (`log`) theirs."""

    name = "server"
    poll_s = 0.05
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _popen(self) -> subprocess.Popen:
        raise NotImplementedError

    def serving(self) -> bool:
        raise NotImplementedError

    def log(self) -> str:
        return ""

    def start(self, timeout: float = 30.0):
        """Start (or restart: same port, same directory) and wait until it serves."""
        self.proc = self._popen()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log()}")
            if self.serving():
                return self
            time.sleep(self.poll_s)
        self.kill()
        raise TimeoutError(f"{self.name} not serving after {timeout}s: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(self.stop_signal)

    def _end(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # a paused server cannot act on sig
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tail(path: str, chars: int = 2000) -> str:
    try:
        with open(path) as f:
            return f.read()[-chars:]
    except OSError:
        return ""


__all__ = ["ServerProcess", "require", "tail"]
