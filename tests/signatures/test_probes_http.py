"""/livez goes stale when the loop stops turning, and /readyz follows it:
the probes over a real HTTP server and socket (signatures/runtime)."""
from __future__ import annotations

import http.client
import socket
import threading
import time

from prometheus_client import CollectorRegistry

from signatures.runtime.metrics_http import MAX_CONNECTIONS, serve_metrics, stop_serving
from signatures.runtime.probes import MAX_REASON_CHARS, Probes
from tests.support.procs import free_tcp_port


def probe(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_a_loop_that_stops_beating_is_not_live_and_not_ready():
    probes = Probes(stale_after_s=0.5)
    port = free_tcp_port()
    server = serve_metrics(CollectorRegistry(), port, probes=probes)
    try:
        assert probe(port, "/readyz") == (503, "not ready: starting\n")
        probes.set_ready(True, "serving x@1")
        assert probe(port, "/readyz") == (200, "ready: serving x@1\n")
        assert probe(port, "/livez")[0] == 200
        time.sleep(0.7)   # no beat: the loop is stuck
        code, body = probe(port, "/livez")
        assert code == 503 and "has not turned for" in body, body
        code, body = probe(port, "/readyz")
        assert code == 503 and "has not turned for" in body, body
        probes.beat()
        assert probe(port, "/livez")[0] == 200 and probe(port, "/readyz")[0] == 200
        probes.set_ready(False, "why " * 1000)   # bodies stay short
        code, body = probe(port, "/readyz")
        assert code == 503 and len(body) <= MAX_REASON_CHARS + 1, len(body)
    finally:
        stop_serving(server)


def test_a_port_without_probes_says_so():
    port = free_tcp_port()
    server = serve_metrics(CollectorRegistry(), port)
    try:
        assert probe(port, "/livez") == (503, "this process serves no probes\n")
        assert probe(port, "/metrics")[0] == 200
    finally:
        stop_serving(server)


def test_idle_connections_are_bounded_and_the_port_answers_once_they_go():
    """Connections that send nothing hold a handler each until dropped: past
    MAX_CONNECTIONS at once a new one is answered 503 at once instead of
    another thread, and the port serves again as soon as a slot frees."""
    port = free_tcp_port()
    probes = Probes()
    probes.set_ready(True, "serving x@1")
    server = serve_metrics(CollectorRegistry(), port, probes=probes)
    threads_before = threading.active_count()
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS + 50):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        code, body = probe(port, "/livez")
        assert code == 503 and "connections" in body, (code, body)
        assert threading.active_count() <= threads_before + MAX_CONNECTIONS, \
            threading.active_count()
        for s in idle:   # the peers go: their handlers end, the port serves again
            s.close()
        idle.clear()
        until = time.monotonic() + 30
        while (got := probe(port, "/livez"))[0] != 200:
            assert time.monotonic() < until, got
            time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
        stop_serving(server)
