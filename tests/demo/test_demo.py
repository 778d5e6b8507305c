"""The main job, end to end at a small scale: real supervisord, real leaves
and roots, real load; and nothing left running afterwards."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signatures.bundle import Bundle
from signatures.savings import report
from signatures.schema import FeatureSchema
from tests.support.procs import processes_mentioning
from tests.support.signals import alive, shm_segments_of, socket_files, with_dispositions

SMALL = ["--scale", "0.2", "--users", "50", "--items", "400", "--requests", "24",
         "--candidates", "64", "--no-progress"]


def spawned(run_dir: Path) -> dict[str, int]:
    """Program name -> pid, of every program this demo's supervisord started
    (its log says so): the processes whose rings the test may count as its own."""
    log = (run_dir / "logs" / "supervisord.log").read_text()
    return {name: int(pid) for name, pid in re.findall(r"spawned: '([^']+)' with pid (\d+)", log)}


@pytest.fixture
def run_dir(tmp_path):
    # Short path: ipc socket paths must fit in 108 bytes.
    path = Path(f"/tmp/trim-demo-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    yield path
    left = processes_mentioning(str(path))
    for line in left:
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    subprocess.run(["rm", "-rf", str(path)])
    assert not left, f"demo left processes behind: {left}"


@pytest.mark.slow
def test_demo_runs_end_to_end_and_trims_by_the_expected_fraction(run_dir):
    done = subprocess.run([sys.executable, "-m", "signatures.cli", "demo", "--run-dir", str(run_dir), *SMALL],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["mode"]: r for r in json.loads((run_dir / "results.json").read_text())}
    assert set(results) >= {"all", "all-lz4", "trimmed", "trimmed-lz4"}
    for r in results.values():
        assert r["ok"] == r["requests"] == 24 and not r["errors"] and not r["model_errors"], r

    schema = FeatureSchema.load(run_dir / "schema.json")
    rows = report(Bundle.load(run_dir / "bundle.json"), schema, rows=64)
    models = [row for row in rows if row.kind == "model"]
    expected = sum(m.trimmed.total for m in models) / sum(m.all.total for m in models)
    measured = results["trimmed"]["bytes_sent"] / results["all"]["bytes_sent"]
    assert measured == pytest.approx(expected, abs=0.05), (measured, expected)
    assert results["trimmed-lz4"]["wire_bytes"] < results["trimmed"]["wire_bytes"]

    table = (run_dir / "results.md").read_text()
    assert "| trimmed |" in table and "network vs all" in table and "| all features |" in table
    assert (run_dir / "results.png").stat().st_size > 10_000
    assert list((run_dir / "sock").iterdir()) == []
    programs = spawned(run_dir)
    assert "root-trimmed-shm-0" in programs, programs  # the one with rings
    assert shm_segments_of(programs.values()) == set()


def node_pids(run_dir: Path) -> set[int]:
    """The demo and everything it started: each names its run directory."""
    return {int(line.split(":")[0]) for line in processes_mentioning(str(run_dir))}


def start_demo(run_dir: Path, *args: str, ignored: tuple[str, ...] = ()) -> subprocess.Popen:
    argv = [sys.executable, "-m", "signatures.cli", "demo", "--run-dir", str(run_dir), *args]
    return subprocess.Popen(with_dispositions(argv, ignored), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen, marker: str, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return
    raise AssertionError(f"the demo ended before {marker!r}:\n" + "".join(lines))


def assert_nothing_left(run_dir: Path, node: set[int]) -> None:
    """No process, socket or segment of this demo: its pids, its run directory, its rings."""
    assert not alive(node), processes_mentioning(str(run_dir))
    assert processes_mentioning(str(run_dir)) == []
    assert shm_segments_of(node) == set()
    assert socket_files(run_dir) == []
    assert not (run_dir / "supervisord.pid").exists()


# Two modes (one with shared-memory rings) keep these runs short; the node is
# the same shape as the full demo's.
STOPPABLE = [*SMALL, "--modes", "all", "trimmed-shm"]


@contextlib.contextmanager
def demo(run_dir: Path, *args: str, ignored: tuple[str, ...] = ()):
    proc = start_demo(run_dir, *args, ignored=ignored)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig, ignored", [(signal.SIGTERM, ()), (signal.SIGINT, ("SIGINT",))],
                         ids=["SIGTERM", "SIGINT-ignored-at-start"])
def test_a_stop_signal_stops_the_node_it_kept_running(run_dir, sig, ignored):
    with demo(run_dir, *STOPPABLE, "--keep-running", ignored=ignored) as proc:
        lines: list[str] = []
        read_until(proc, "The node is up", lines)
        node = node_pids(run_dir)
        assert len(node) >= 6, node  # the demo, supervisord, 2 leaves, 2 roots
        assert shm_segments_of(node), "the shared-memory root has no rings"
        assert socket_files(run_dir)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    out = "".join(lines) + out
    # The run completed (results written) before the signal: a clean stop is success.
    assert proc.returncode == 0, out
    assert f"{signal.Signals(sig).name}: stopping the node" in out
    assert "stopped cleanly" in out
    assert_nothing_left(run_dir, node)


@pytest.mark.slow
def test_a_signal_during_the_run_stops_everything_and_fails_the_run(run_dir):
    args = [*STOPPABLE, "--requests", "400"]  # long enough to be mid-run when the signal lands
    with demo(run_dir, *args) as proc:
        lines: list[str] = []
        read_until(proc, "all healthy", lines)
        node = node_pids(run_dir)
        proc.send_signal(signal.SIGHUP)
        out, _ = proc.communicate(timeout=90)
    out = "".join(lines) + out
    assert proc.returncode == 1, out
    assert "interrupted by SIGHUP before the results were written" in out
    assert not (run_dir / "results.json").exists()
    assert_nothing_left(run_dir, node)


@pytest.mark.slow
def test_sigkill_of_the_demo_takes_its_node_down(run_dir):
    with demo(run_dir, *STOPPABLE, "--keep-running") as proc:
        lines: list[str] = []
        read_until(proc, "The node is up", lines)
        node = node_pids(run_dir)
        assert shm_segments_of(node)
        proc.kill()
        proc.wait()
    # supervisord is told (SIGTERM) when the demo dies and drains the node.
    deadline = time.monotonic() + 60
    while alive(node) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_nothing_left(run_dir, node)


@pytest.mark.slow
def test_demo_with_reads_sends_the_read_bytes_and_compares_whole_features(run_dir):
    """--models reads: the Matryoshka and bf16 models' messages are what the
    report says their reads take; mode trimmed-whole sends the features whole."""
    done = subprocess.run([sys.executable, "-m", "signatures.cli", "demo", "--run-dir", str(run_dir),
                           *SMALL, "--models", "reads", "--leaves", "1",
                           "--modes", "trimmed", "trimmed-whole"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["mode"]: r for r in json.loads((run_dir / "results.json").read_text())}
    for r in results.values():
        assert r["ok"] == r["requests"] == 24 and not r["errors"] and not r["model_errors"], r
    rows = [r for r in report(Bundle.load(run_dir / "bundle.json"),
                              FeatureSchema.load(run_dir / "schema.json"), rows=64)
            if r.kind == "model"]
    assert {r.name for r in rows} == {"mat@1", "bf16@1"} and all(r.reads for r in rows)
    fine, whole = (results[m]["bytes_sent"] / results[m]["ok"] for m in ("trimmed", "trimmed-whole"))
    assert fine == pytest.approx(sum(r.reads.total for r in rows), rel=0.02), fine
    assert whole == pytest.approx(sum(r.trimmed.total for r in rows), rel=0.02), whole
