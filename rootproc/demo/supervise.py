"""supervisord, tied to the life of the demo that started it.

``python -m rootproc.demo.supervise PARENT_PID -c CONF`` sets Linux's
parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) and then runs
supervisord in this same process. When the demo dies, however it dies
(SIGKILL included), the kernel sends supervisord SIGTERM, its ordinary
"stop everything" request: each program gets its own stop signal and
`stopwaitsecs`, the roots and leaves drain and remove their sockets and
shared-memory rings, and supervisord removes its own socket and pid file.

The kernel sends the signal when the *thread* that forked this process
exits, not the process: `Node.start` therefore starts supervisord only from
the demo's main thread, which lives as long as the demo does. The setting is
kept across exec and dropped across fork, so it ties supervisord alone;
supervisord ties its programs (it stops them before it exits).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

from signatures.runtime.stop_signals import STOP_SIGNALS

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
DEATH_SIGNAL = signal.SIGTERM


def tie_to_parent(parent_pid: int) -> bool:
    """Have DEATH_SIGNAL sent to us when our parent's thread exits; False when
    the parent is gone already (it died before we asked: no signal will come)."""
    if not sys.platform.startswith("linux"):
        return os.getppid() == parent_pid
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return os.getppid() == parent_pid


def main(argv: list[str]) -> int:
    if len(argv) < 1 or not argv[0].isdigit():
        print("usage: python -m rootproc.demo.supervise PARENT_PID SUPERVISORD_ARGS...",
              file=sys.stderr)
        return 2
    # The demo holds (blocks) these while it starts us, and may itself have
    # inherited some ignored: supervisord gets them as a fresh process has them.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if not tie_to_parent(int(argv[0])):
        print(f"supervise: {argv[0]} is no longer our parent (it died); not starting supervisord",
              file=sys.stderr)
        return 1
    from supervisor.supervisord import main as supervisord
    supervisord(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
