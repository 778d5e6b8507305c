"""A shared-memory descriptor naming something that is not a segment file gets
an error reply, and the leaf keeps serving.

The segment directory is a private one (``TRIMMER_SHM_DIR``) where the test
plants a directory and a FIFO under trimmer segment names; pid 1 owns them by
name, so the leaf's start-up reap leaves them alone.
"""
from __future__ import annotations

import os

import pytest

from tests.support.procs import Client, ping

pytestmark = pytest.mark.slow

BASE = {"type": "score", "model": "ctr@3", "rows": 4, "compression": "none"}


@pytest.fixture
def shm_dir(tmp_path, monkeypatch):
    path = tmp_path / "shm"
    path.mkdir()
    monkeypatch.setenv("TRIMMER_SHM_DIR", str(path))  # inherited by the spawned leaf
    return path


def test_descriptor_naming_a_directory_or_fifo_is_refused(process_runner, repo, shm_dir):
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-faults")
    directory = shm_dir / "trimmer-1-dir-00000000"
    directory.mkdir()
    fifo = shm_dir / "trimmer-1-fifo-00000000"
    os.mkfifo(fifo)
    with Client(leaf.endpoint) as c:
        for path in (directory, fifo):
            desc = {"segment": path.name, "size": os.stat(path).st_size, "offset": 0,
                    "nbytes": 0, "slot": 0}
            header, frames = c.request({**BASE, "shm": desc}, timeout=10)
            assert not header["ok"] and header["error"]["kind"] == "bad_request", header
            assert path.name in header["error"]["message"], header
            assert frames == []
    assert leaf.returncode is None
    assert ping(leaf.endpoint, timeout=5)["ok"]
