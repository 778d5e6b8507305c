"""A root started on an endpoint or metrics port a live process holds exits 2
before binding or linking anything, with one line and no traceback; it
removes no socket file it does not own; its metrics port (by default not
node_exporter's 9100) serves /metrics only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.support.procs import free_tcp_port, ping

from .conftest import leaves_running, spawn_root
from .world import root_config, write_root_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world, ("ipc",)) as endpoints:
        yield endpoints


def run_root(world, tmp_path, leaves, bind, **overrides):
    cfg = root_config(world, leaves, bind, name="dup", **overrides)
    path = write_root_config(str(tmp_path / "dup.json"), cfg)
    return subprocess.run([sys.executable, "-m", "rootproc", "--config", path],
                          capture_output=True, text=True, timeout=120)


def assert_refused(r, *words):
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_a_second_root_on_a_live_ipc_endpoint_exits_2(world, leaves, process_runner, tmp_path):
    first = spawn_root(process_runner, world, leaves["ipc"], name="first")
    path = first.endpoint[len("ipc://"):]
    inode = os.stat(path).st_ino
    assert_refused(run_root(world, tmp_path, leaves["ipc"], first.endpoint),
                   first.endpoint, "in use")
    assert os.stat(path).st_ino == inode
    assert ping(first.endpoint, timeout=5) is not None


def test_a_root_leaves_a_socket_file_it_does_not_own(world, leaves, process_runner):
    root = spawn_root(process_runner, world, leaves["ipc"], name="owner")
    path = root.endpoint[len("ipc://"):]
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX)
    try:
        other.bind(path)
        other.listen()
        theirs = os.stat(path).st_ino
        assert root.stop() == 0
        assert os.path.exists(path) and os.stat(path).st_ino == theirs
    finally:
        other.close()
        os.unlink(path)


def test_busy_metrics_or_tcp_port_exits_2_before_binding(world, leaves, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        r = run_root(world, tmp_path, leaves["ipc"], f"ipc://{tmp_path}/dup.ipc",
                     metrics_port=port)
        assert_refused(r, f"metrics port {port}", "in use")
        assert "linked" not in r.stderr and not os.path.exists(f"{tmp_path}/dup.ipc")
        r = run_root(world, tmp_path, leaves["ipc"], f"tcp://127.0.0.1:{port}")
        assert_refused(r, f"tcp://127.0.0.1:{port}", "in use")
    finally:
        busy.close()


def test_metrics_port_serves_metrics_and_404_elsewhere(world, leaves, process_runner):
    from rootproc.defaults import METRICS_PORT
    assert METRICS_PORT != 9100   # node_exporter's
    port = free_tcp_port()
    spawn_root(process_runner, world, leaves["ipc"], name="metrics", metrics_port=port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b"trimmer_root" in body
    for path in ("/", "/favicon.ico", "/anything", "/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert e.value.code == 404, path
