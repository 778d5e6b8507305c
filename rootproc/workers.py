"""Worker threads that fetch records and build batches, so that one root uses more than one core.

The serving loop hands each score request, once its header is checked, to
one of ``max(1, threads - 1)`` workers and goes back to its sockets: the
loop builds no large batch (rootproc/scoring.py `Scorer.score`). A worker
does the request's fetch and preprocessing (LMDB reads, Redis round trips
and the compiled record program all let go of the GIL) and posts the result
back; the loop thread then sends the request's models and owns it from
there, as it owns every socket, the router and its one reply
(rootproc/router.py). Nothing a worker touches belongs to the loop: it gets
the request, the preprocessor chosen for it (a compiled, immutable object)
and the store's thread-safe reads.

Results come back through a queue and an eventfd the loop polls, in the
order workers finish them.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("rootproc")

_STOP = object()


class BatchWorkers:
    """``n`` threads running ``compute(job)``; finished jobs in `finished`."""

    def __init__(self, n: int, compute: Callable, name: str = "root"):
        self.compute = compute
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pending = 0            # submitted and not collected yet: the loop's count
        self._threads = [threading.Thread(target=self._run, name=f"{name}-batch-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, job) -> None:
        self.pending += 1
        self._todo.put(job)

    def finished(self) -> list:
        """The jobs done since the last call (the loop thread's)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.pending -= len(out)
        return out

    def _run(self) -> None:
        while (job := self._todo.get()) is not _STOP:
            try:
                self.compute(job)
            except BaseException as exc:   # handed back: the loop answers it
                job.error = exc
            self._done.put(job)
            os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(_STOP)
        for t in self._threads:
            t.join(10)
        os.close(self.fd)


__all__ = ["BatchWorkers"]
