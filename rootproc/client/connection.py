"""How a scoring client reaches its roots: one DEALER connected to every
endpoint (CURVE for tcp when given keys), and the monitor that says why a
handshake failed or that a connection dropped (rule `client.connection-lost`)."""
from __future__ import annotations

import zmq

from _trim.transport import curve, monitor, sockets


def curve_keys(server_public_key=None, client_secret_key=None) -> curve.ClientKeys | None:
    """ClientKeys from key files (or Z85 strings); None without a server key."""
    if server_public_key is None:
        if client_secret_key is not None:
            raise ValueError("curve_client_secret_key needs curve_server_public_key")
        return None
    return curve.ClientKeys.load(server_public_key, client_secret_key, "client curve")


def connect_dealer(ctx, endpoints, keys: curve.ClientKeys | None = None, watch: bool = False):
    """One DEALER connected to every root: zmq spreads requests across them.
    With ``keys``, tcp endpoints are reached over CURVE. (endpoints, socket,
    a HandshakeLog attached before connecting when ``watch``, else None)."""
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    handshakes = HandshakeLog(sock, endpoints, keys is not None) if watch else None
    sockets.connect_all(sock, endpoints, keys)
    return endpoints, sock, handshakes


class HandshakeLog:
    """The last failed handshake on a socket's tcp connections, for error
    messages; with one endpoint, also when its connection drops and comes
    back (rule `client.connection-lost`)."""

    def __init__(self, sock, endpoints, curve_used: bool = False):
        self.curve_used = curve_used
        self.single = len(endpoints) == 1
        events = monitor.FAILURE_EVENTS if any(sockets.secured(ep) for ep in endpoints) else 0
        if self.single:
            events |= zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        self.monitor = sock.get_monitor_socket(events) if events else None
        self.last: str | None = None
        self.up = False      # a connection is up, its handshake done
        self.down = False    # the connection dropped and no new one is up yet
        self.dropped = 0     # drops not yet acted on

    def read(self) -> None:
        """The events waiting."""
        if self.monitor is None:
            return
        for event, value in monitor.drain_events(self.monitor):
            self.note(event, value)

    def note(self, event: int, value: int) -> None:
        """One monitor event (an asyncio client reads them itself)."""
        if event == zmq.EVENT_DISCONNECTED:
            # Only a connection that was up carried requests: one whose
            # handshake failed sent none (they wait in zmq's queue, and
            # the timeout says why: `hint`).
            if self.up:
                self.down, self.up = True, False
                self.dropped += 1
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.down, self.up = False, True
        elif event & monitor.FAILURE_EVENTS:
            self.last = monitor.describe(event, value, server=False, curve=self.curve_used)

    def hint(self) -> str:
        self.read()
        return f" (handshake failed: {self.last})" if self.last else ""

    def close(self, sock) -> None:
        if self.monitor is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)


def add_curve_arguments(parser) -> None:
    """--curve-server-public-key / --curve-client-secret-key, for the CLIs."""
    parser.add_argument("--curve-server-public-key", metavar="FILE",
                        help="the root's (or leaf's) CURVE public key file NAME.key: tcp "
                             "endpoints are reached over CURVE")
    parser.add_argument("--curve-client-secret-key", metavar="FILE",
                        help="this client's key pair NAME.key_secret (default: a throwaway "
                             "pair, accepted only by a server allowing any key)")
