"""`trimmer demo --remote-leaf-bandwidth`: the leaves in their own network
namespace behind a shaped link, and nothing of it left afterwards."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rootproc.demo.netns import owner_pid, unavailable_reason

from .test_remote_leaf import leftovers, processes_mentioning

REASON = unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=f"{REASON or ''}")]

SMALL = ["--scale", "0.2", "--users", "50", "--items", "400", "--requests", "16",
         "--candidates", "64", "--no-progress"]


def demo(run_dir: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "signatures.cli", "demo", "--run-dir", str(run_dir),
                           *SMALL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_dir():
    path = Path(f"/tmp/trim-netdemo-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    yield path
    subprocess.run(["rm", "-rf", str(path)])


@pytest.mark.slow
def test_demo_with_remote_leaves(run_dir):
    done = demo(run_dir, "--remote-leaf-bandwidth", "1gbit", "--modes", "all", "trimmed")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "leaves in network namespace trim-leaf-" in done.stdout
    results = {r["mode"]: r for r in json.loads((run_dir / "results.json").read_text())}
    assert set(results) == {"all", "trimmed"}
    for r in results.values():
        assert r["ok"] == r["requests"] == 16 and not r["errors"] and not r["model_errors"], r
    assert results["trimmed"]["wire_bytes"] < results["all"]["wire_bytes"]
    assert "link shaped to 1gbit" in (run_dir / "results.md").read_text()
    assert any("tcp://10.213." in p.read_text() for p in (run_dir / "roots").glob("*.json"))
    ns = re.search(r"network namespace (trim-leaf-\S+)", done.stdout).group(1)
    log = (run_dir / "logs" / "supervisord.log").read_text()
    pids = [int(p) for p in re.findall(r"with pid (\d+)", log)]
    assert len(pids) >= 4, log  # two leaves and a root per mode
    assert not leftovers(owner_pid(ns), *pids)
    assert not processes_mentioning(str(run_dir))


def test_demo_refuses_shared_memory_with_remote_leaves_and_bad_rates(run_dir):
    # Both are refused while parsing the arguments, before anything is made.
    done = demo(run_dir, "--remote-leaf-bandwidth", "1gbit", "--modes", "trimmed-shm", timeout=60)
    assert done.returncode == 2 and "needs leaves on this node" in done.stderr, done.stderr
    done = demo(run_dir, "--remote-leaf-bandwidth", "fast", timeout=60)
    assert done.returncode == 2 and "expected a rate like 200mbit" in done.stderr, done.stderr
