"""The main job, end to end at a small scale: real supervisord, real leaves
and roots, real load; and nothing left running afterwards."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signatures.bundle import Bundle
from signatures.report import report
from signatures.schema import FeatureSchema
from tests.support.procs import processes_mentioning

SMALL = ["--scale", "0.2", "--users", "50", "--items", "400", "--requests", "24",
         "--candidates", "64", "--no-progress"]


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


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
    shm_before = shm_entries()
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
    assert shm_entries() <= shm_before


@pytest.mark.slow
def test_ctrl_c_stops_everything(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "signatures.cli", "demo", "--run-dir", str(run_dir),
                             *SMALL, "--keep-running"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "The node is up" in line:
                break
        assert processes_mentioning(str(run_dir)), "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "everything started has been stopped" in out
    assert processes_mentioning(str(run_dir)) == []
    assert list((run_dir / "sock").iterdir()) == []
