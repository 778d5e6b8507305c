"""The "left as found" check counts the segments of processes these tests
started, not those of another Feature Trimmer running on the machine."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.procs import REPO_ROOT

from .conftest import SHM_DIR

# Another Trimmer process on the node: it makes a ring when told, and keeps it.
OTHER = """
import sys
from _trim.transport.shm import SlotRing
rings = []
for line in sys.stdin:
    rings.append(SlotRing("other", 4096, 1))
    print(rings[-1].name, flush=True)
for ring in rings:
    ring.close()
"""


@pytest.fixture(scope="module")
def other_trimmer():
    """Started by this module, not by a test: it outlives each test's check."""
    proc = subprocess.Popen([sys.executable, "-c", OTHER], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_a_segment_another_process_makes_meanwhile_is_not_a_leak(other_trimmer):
    other_trimmer.stdin.write("ring\n")
    other_trimmer.stdin.flush()
    name = other_trimmer.stdout.readline().strip()
    assert name.startswith(f"trimmer-{other_trimmer.pid}-")
    assert os.path.exists(os.path.join(SHM_DIR, name))
