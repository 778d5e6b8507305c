"""Start a command with the signal dispositions a test means, not the runner's.

A test runner started as a background job of a non-interactive shell (or
under nohup) has SIGINT ignored, and every process it starts inherits that;
one started by a process manager may differ again. ``with_dispositions``
wraps an argv so that the command starts with SIGINT, SIGTERM and SIGHUP at
their defaults, except those named ignored, and none of them blocked, then
execs it (same pid: signals sent to the wrapper's pid reach the command).
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

_EXEC = (
    "import os, signal, sys\n"
    "ignored = {s for s in sys.argv[1].split(',') if s}\n"
    "for name in ('SIGINT', 'SIGTERM', 'SIGHUP'):\n"
    "    sig = getattr(signal, name)\n"
    "    signal.signal(sig, signal.SIG_IGN if name in ignored else signal.SIG_DFL)\n"
    "    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def with_dispositions(argv: list[str], ignored: tuple[str, ...] = ()) -> list[str]:
    """``argv`` started with ``ignored`` (names from STOP_SIGNALS) ignored, the rest default."""
    unknown = set(ignored) - set(STOP_SIGNALS)
    assert not unknown, f"not a stop signal: {unknown}"
    return [sys.executable, "-c", _EXEC, ",".join(ignored), *argv]


def _mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise LookupError(f"{field} not in /proc/{pid}/status")


def caught(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (not default, not ignored)."""
    return bool(_mask(pid, "SigCgt") >> (sig - 1) & 1)


def ignored(pid: int, sig: int) -> bool:
    return bool(_mask(pid, "SigIgn") >> (sig - 1) & 1)


def alive(pids) -> set[int]:
    """Those of ``pids`` that still run (a zombie does not)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def shm_segments_of(pids, directory: str = "/dev/shm") -> set[str]:
    """The trimmer segments (``trimmer-<pid>-...``) owned by any of ``pids``."""
    prefixes = tuple(f"trimmer-{pid}-" for pid in pids)
    try:
        return {n for n in os.listdir(directory) if n.startswith(prefixes)}
    except FileNotFoundError:
        return set()


def socket_files(directory: Path) -> list[Path]:
    """Unix socket files anywhere under ``directory``."""
    out = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = Path(root, name)
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    out.append(path)
            except OSError:
                pass
    return out


__all__ = ["STOP_SIGNALS", "with_dispositions", "caught", "ignored", "alive", "shm_segments_of",
           "socket_files"]
