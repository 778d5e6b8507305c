"""A leaf started on an endpoint or metrics port a live process holds exits 2
before binding anything, with one line and no traceback; no process removes
an ipc socket file it does not own; the metrics port serves /metrics only."""
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.support.procs import REPO_ROOT, ping

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def run_leaf(repo, bind, *extra):
    return subprocess.run([sys.executable, "-m", "leafproc", "--repo", str(repo.root), "--bind",
                           bind, "--name", "dup", "--threads", "1", "--model", "eng@1", *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def assert_refused(r, *words):
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def listening_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_second_leaf_on_a_live_ipc_endpoint_exits_2_and_takes_nothing(process_runner, repo):
    first = process_runner.leaf(repo.root, models=["eng@1"], name="first")
    path = first.endpoint[len("ipc://"):]
    inode = os.stat(path).st_ino
    r = run_leaf(repo, first.endpoint)
    assert_refused(r, first.endpoint, "in use")
    assert os.stat(path).st_ino == inode            # not replaced, not removed
    assert ping(first.endpoint, timeout=5) is not None


def test_a_leaf_leaves_a_socket_file_it_does_not_own(process_runner, repo):
    leaf = process_runner.leaf(repo.root, models=["eng@1"], name="owner")
    path = leaf.endpoint[len("ipc://"):]
    os.unlink(path)                                  # someone else's socket there now
    other = socket.socket(socket.AF_UNIX)
    try:
        other.bind(path)
        other.listen()
        theirs = os.stat(path).st_ino
        assert leaf.stop() == 0
        assert os.path.exists(path) and os.stat(path).st_ino == theirs
    finally:
        other.close()
        os.unlink(path)


def test_busy_metrics_or_tcp_port_exits_2_before_binding(repo, tmp_path):
    busy = listening_port()
    try:
        port = busy.getsockname()[1]
        bind = f"ipc://{tmp_path}/leaf.ipc"
        r = run_leaf(repo, bind, "--metrics-port", str(port))
        assert_refused(r, f"metrics port {port}", "in use")
        assert not os.path.exists(f"{tmp_path}/leaf.ipc")
        r = run_leaf(repo, f"tcp://127.0.0.1:{port}")
        assert_refused(r, f"tcp://127.0.0.1:{port}", "in use")
    finally:
        busy.close()


def test_metrics_port_serves_metrics_and_404_elsewhere(process_runner, repo):
    from tests.support.procs import free_tcp_port
    port = free_tcp_port()
    process_runner.leaf(repo.root, models=["eng@1"], name="metrics",
                        args=["--metrics-port", str(port)])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b"trimmer_leaf" in body
    for path in ("/", "/favicon.ico", "/anything", "/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert e.value.code == 404, path
