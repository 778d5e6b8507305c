"""HTTP probes on the metrics port of real root and leaf processes: /livez while
the loop turns, /readyz once the process serves what it should (the root: a
config and a healthy replica for each of its models; a leaf: its versions
loaded and warmed), with a short body saying why; 404, 405 and 414 for the
rest."""
from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request

import pytest

from signatures.configstore import Stages, open_config_store
from tests.support.procs import free_tcp_port

from .conftest import spawn_root

pytestmark = pytest.mark.slow


def probe(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def until(what: str, cond, timeout: float = 60.0):
    t_end = time.monotonic() + timeout
    last = None
    while time.monotonic() < t_end:
        last = cond()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")


def status_is(port: int, path: str, code: int):
    def check():
        try:
            got, body = probe(port, path)
        except OSError:
            return None
        return (got, body) if got == code else None
    return check


def leaf_with_port(runner, world, name, models, endpoint=None):
    port = free_tcp_port()
    proc = runner.leaf(world["repo"], models=models, name=name, bind=endpoint,
                       args=["--max-wait-ms", "0", "--metrics-port", str(port)])
    return proc, port


def test_root_and_leaf_probes_and_readiness_flipping_as_a_leaf_stops(world, process_runner):
    leaf0, port0 = leaf_with_port(process_runner, world, "leaf-0", ["ctr@3", "eng@1"])
    leaf1, port1 = leaf_with_port(process_runner, world, "leaf-1", ["div@2"])
    for port, models in ((port0, "ctr@3, eng@1"), (port1, "div@2")):
        assert probe(port, "/livez")[0] == 200
        code, body = until("leaf ready", status_is(port, "/readyz", 200))
        assert body.startswith("ready: serving") and models in body, body
    root_port = free_tcp_port()
    root = spawn_root(process_runner, world, {"leaf-0": leaf0.endpoint, "leaf-1": leaf1.endpoint},
                      metrics_port=root_port)
    code, body = until("root ready", status_is(root_port, "/readyz", 200), timeout=30)
    assert body.startswith("ready: config ") and "3 model(s) served" in body, body
    code, body = probe(root_port, "/livez")
    assert code == 200 and body.startswith("live: "), body

    leaf1.stop()   # SIGTERM: it drains, then its connection drops
    code, body = until("root not ready", status_is(root_port, "/readyz", 503), timeout=30)
    assert body.startswith("not ready: config ") and "div@2" in body and "ctr@3" not in body, body
    assert "leaf-1" in body, body
    assert probe(root_port, "/livez")[0] == 200   # not ready is not dead

    leaf1, port1 = leaf_with_port(process_runner, world, "leaf-1", ["div@2"],
                                  endpoint=leaf1.endpoint)
    until("root ready again", status_is(root_port, "/readyz", 200), timeout=30)

    root.stop()
    leaf0.stop()
    with pytest.raises(OSError):   # gone with its process
        probe(root_port, "/livez")


def test_the_port_serves_three_paths_two_methods_and_short_request_lines(world, process_runner):
    leaf, port = leaf_with_port(process_runner, world, "leaf-0", ["eng@1"])
    until("leaf ready", status_is(port, "/readyz", 200))
    for path in ("/", "/livez/x", "/readyzz", "/metrics/x", "/favicon.ico"):
        code, body = probe(port, path)
        assert code == 404 and "/metrics, /livez, /readyz" in body, (path, body)
    code, _ = probe(port, "/livez?verbose=1")   # a query string is ignored
    assert code == 200
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, "/readyz", body=b"x" if method in ("POST", "PUT") else None)
        r = conn.getresponse()
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD", method
        conn.close()
    for path in ("/livez", "/readyz", "/metrics"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("HEAD", path)
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"", path
        conn.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /" + b"a" * 5000 + b" HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 414"), "request line over the bound"
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b"trimmer_leaf_requests_total" in body
    assert probe(port, "/readyz")[0] == 200   # still serving after all that


def test_a_root_waiting_for_its_first_config_is_live_and_not_ready(world, process_runner,
                                                                  tmp_path):
    leaf, _ = leaf_with_port(process_runner, world, "leaf-0", ["ctr@3", "eng@1"])
    leaf1, _ = leaf_with_port(process_runner, world, "leaf-1", ["div@2"])
    configs = str(tmp_path / "configs")
    port = free_tcp_port()
    spawn_root(process_runner, world, {"leaf-0": leaf.endpoint, "leaf-1": leaf1.endpoint},
               bundle=None, config_store=configs, stage="canary", ready=None, metrics_port=port)
    code, body = until("root waiting, not ready", status_is(port, "/readyz", 503), timeout=30)
    assert "no active config" in body and "canary" in body, body
    assert probe(port, "/livez")[0] == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
    Stages(open_config_store(configs)).deploy(world["bundle_obj"], "canary")
    code, body = until("root ready", status_is(port, "/readyz", 200), timeout=30)
    assert world["bundle_obj"].id in body, body
