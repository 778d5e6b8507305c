"""What a failed CURVE handshake means, for the log and the root's pong; when
a connection comes and goes.

A failed handshake is silent in zmq (no message, no error on send), so both
ends watch socket monitor events: a connecting socket through `LinkWatch`,
read by its owner's thread, a binding one through a `ServerMonitor` thread.
`LinkWatch` also says when the connection dropped and when a new one is up:
the peer behind it may be another process by then.
"""
from __future__ import annotations

import logging
import threading
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("trimmer.curve")

FAILURE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
LINK_EVENTS = (FAILURE_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
               | zmq.EVENT_MONITOR_STOPPED)
# The same failure repeats at every reconnect: say it again only this often.
REPEAT_LOG_S = 60.0


def secured(endpoint: str) -> bool:
    """Whether CURVE applies to ``endpoint``: tcp only, ipc stays plain."""
    return endpoint.startswith("tcp://")


def describe(event: int, value: int, server: bool, curve: bool = True) -> str:
    """What a failed handshake means, seen from a server or a client (``curve``:
    whether that client uses CURVE)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"rejected a client's CURVE key (ZAP status {value})" if server else
                f"the server rejected this process's CURVE key (ZAP status {value}): add its "
                "public key to the server's authorized keys")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return ("a client without CURVE (or with CURVE against a plain endpoint) was refused"
                    if server else "security mechanism mismatch: one side uses CURVE on this "
                    "endpoint and the other does not")
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return ("a client's CURVE handshake failed to decrypt: it holds the wrong server "
                    "public key" if server else "CURVE handshake failed to decrypt: wrong keys")
        return f"handshake protocol error {value:#x}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if server:
            # The client saw the mismatch first and hung up before this side
            # read its greeting: the usual way a client without CURVE fails.
            return ("a client closed its connection during the CURVE handshake (a client "
                    "without CURVE, or with the wrong server key, gives up this way)")
        if not curve:
            return ("the server closed the connection during the handshake: it probably "
                    "requires CURVE (give its public key)")
        return ("the server closed the connection during the handshake: the server public "
                "key configured here is probably not the server's (or it does not use CURVE)")
    return f"zmq event {event:#x} ({value})"


def drain_events(monitor: zmq.Socket) -> list[tuple[int, int]]:
    """(event, value) pairs waiting on a monitor socket, without blocking."""
    out: list[tuple[int, int]] = []
    while True:
        try:
            msg = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return out
        ev = parse_monitor_message(msg)
        out.append((ev["event"], ev["value"]))


class LinkWatch:
    """Connection and handshake events of one connecting socket, read by its
    owner's thread (``monitor`` may sit in the owner's poller).

    ``problem`` holds the last failure until a handshake succeeds. libzmq does
    not reconnect after the server rejects the key or the mechanism; ``due``
    says when the owner should reconnect by hand, so that a fixed server
    (its authorized keys updated, or restarted with CURVE) is picked up."""

    RETRY_S = 5.0

    def __init__(self, sock: zmq.Socket, label: str, public_key: bytes | None = None):
        self.label = label
        self.public_key = public_key
        self.monitor = sock.get_monitor_socket(LINK_EVENTS)
        self.problem: str | None = None
        self.retry_at: float | None = None
        self._logged_at = float("-inf")

    def poll(self, now: float) -> tuple[bool, bool]:
        """Read the events waiting: (whether the connection dropped, whether a
        connection is up since, its handshake done)."""
        dropped = up = False
        for event, value in drain_events(self.monitor):
            if event == zmq.EVENT_DISCONNECTED:
                dropped, up = True, False
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                up = True
                if self.problem is not None:
                    log.info("%s: handshake succeeded", self.label)
                self.problem, self.retry_at = None, None
                self._logged_at = float("-inf")
            elif event & FAILURE_EVENTS:
                problem = describe(event, value, server=False, curve=self.public_key is not None)
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self.public_key:
                    problem += f" (this side's public key: {self.public_key.decode('ascii')})"
                if problem != self.problem or now - self._logged_at >= REPEAT_LOG_S:
                    log.error("%s: %s", self.label, problem)
                    self._logged_at = now
                self.problem = problem
                if event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # zmq retries those itself
                    self.retry_at = now + self.RETRY_S
        return dropped, up

    def due(self, now: float) -> bool:
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            return True
        return False

    def close(self, sock: zmq.Socket) -> None:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


class ServerMonitor(threading.Thread):
    """Logs a binding socket's failed handshakes (the ZAP handler logs the
    rejected keys themselves; this catches clients that never reach it)."""

    def __init__(self, sock: zmq.Socket, label: str):
        super().__init__(name=f"curve-monitor-{label}", daemon=True)
        self.label = label
        self.monitor = sock.get_monitor_socket(FAILURE_EVENTS | zmq.EVENT_MONITOR_STOPPED)
        self._sock = sock
        self._stopping = threading.Event()
        self._logged: dict[str, float] = {}

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self.monitor.poll(200):
                    continue
                for event, value in drain_events(self.monitor):
                    if event == zmq.EVENT_MONITOR_STOPPED:
                        return
                    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        continue  # the ZAP handler has logged the key
                    problem = describe(event, value, server=True)
                    now = time.monotonic()
                    if now - self._logged.get(problem, float("-inf")) >= REPEAT_LOG_S:
                        self._logged[problem] = now
                        log.warning("%s: %s", self.label, problem)
        except zmq.ZMQError:
            pass  # the context is terminating
        finally:
            self.monitor.close(linger=0)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2)


__all__ = ["LinkWatch", "ServerMonitor", "describe", "drain_events", "secured"]
