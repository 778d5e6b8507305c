"""/livez goes stale when the loop stops turning, and /readyz follows it:
the probes over a real HTTP server and socket (signatures/runtime)."""
from __future__ import annotations

import http.client
import time

from prometheus_client import CollectorRegistry

from signatures.runtime.metrics_http import serve_metrics, stop_serving
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
