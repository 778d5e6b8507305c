"""`trimmer score` stopped early by SIGTERM or SIGINT (also with SIGINT
ignored at start): no new requests, the ones in flight answered, a report of
what was sent, exit 0; a second signal stops the waiting at once."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import zmq

from tests.support.procs import ProcessRunner
from tests.support.signals import caught, with_dispositions

from .conftest import start_root

pytestmark = pytest.mark.slow

MANY = 1_000_000  # more than any test waits for


@pytest.fixture(scope="module")
def root(world, leaves, tmp_path_factory):
    runner = ProcessRunner(tmp_path_factory.mktemp("score-root"))
    try:
        yield start_root(runner, world, leaves, name="root-for-score", ignored=())
    finally:
        runner.close()


def score(endpoint: str, *args: str, ignored=()) -> subprocess.Popen:
    argv = [sys.executable, "-m", "signatures.cli", "score", "--endpoint", endpoint, "--json",
            "--no-progress", *args]
    return subprocess.Popen(with_dispositions(argv, ignored), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_caught(proc: subprocess.Popen, sig: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not caught(proc.pid, sig):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)


@pytest.mark.parametrize("sig, ignored", [(signal.SIGTERM, ()), (signal.SIGINT, ("SIGINT",))],
                         ids=["SIGTERM", "SIGINT-ignored-at-start"])
def test_a_stop_signal_ends_the_load_with_every_request_answered(sig, ignored, root, world):
    proc = score(root.endpoint, "--requests", str(MANY), "--concurrency", "4", "--candidates", "16",
                 "--feature-store", str(world["store"]), ignored=ignored)
    try:
        wait_caught(proc, sig)
        time.sleep(1.0)  # requests flowing
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["stopped_by"] == sig.name
    assert 0 < report["requests"] < MANY
    assert report["ok"] == report["requests"] and report["errors"] == {}, report
    assert "no new requests" in err


def test_a_second_signal_abandons_the_requests_in_flight(tmp_path):
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)  # takes requests, never answers
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    proc = score(f"tcp://127.0.0.1:{port}", "--requests", "10", "--concurrency", "3",
                 "--candidates", "4", "--timeout-ms", "60000")
    try:
        wait_caught(proc, signal.SIGTERM)
        for _ in range(3):
            assert silent.poll(10_000), "score sent nothing"
            silent.recv_multipart()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # waiting for the three in flight
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)  # not the 60 s timeout
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    report = json.loads(out)
    assert report["stopped_by"] == "SIGTERM"
    assert report["requests"] == 3 and report["ok"] == 0
    assert report["errors"] == {"abandoned": 3}, report
