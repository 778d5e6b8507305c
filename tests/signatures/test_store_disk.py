"""The directory config store on a broken disk (issue 25): a full
filesystem, a read-only one, a directory the writer may not read. Each
gives one line naming the path and the cause, the exit-code policy's code
(1: failed), and no traceback. A real filesystem: a small tmpfs mounted for
the test (root only), unmounted after."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from signatures.runtime.exit_codes import EXIT_FAILED
from tests.signatures.test_store import B1, B2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def trimmer(*argv: str, user: int | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run([*prefix, sys.executable, "-m", "signatures.cli", *argv],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT})


@contextlib.contextmanager
def tmpfs(path, size: str):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def one_clear_line(out: subprocess.CompletedProcess, path: str, cause: str) -> None:
    err = out.stderr.strip()
    assert out.returncode == EXIT_FAILED, (out.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert path in lines[0] and cause in lines[0], err


@pytest.fixture
def bundles(tmp_path):
    paths = []
    for k, b in enumerate((B1, B2)):
        p = str(tmp_path / f"b{k}.json")
        b.save(p)
        paths.append(p)
    return paths


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, bundles):
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        store = os.path.join(mnt, "store")
        out = trimmer("deploy", bundles[0], "--stage", "canary", "--config-store", store)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(mnt, "filler"), "wb", buffering=0) as f:   # the rest of the disk
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        out = trimmer("deploy", bundles[1], "--stage", "canary", "--config-store", store)
        one_clear_line(out, store, "No space left on device")
        out = trimmer("deploy-models", "ctr@1", "--stage", "canary", "--replace",
                      "--config-store", store)
        one_clear_line(out, store, "No space left on device")


def test_a_read_only_filesystem_is_one_line_and_exit_1(tmp_path, bundles):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        store = os.path.join(mnt, "store")
        # Two configs, so that a rollback has one to go back to.
        for bundle in bundles:
            assert trimmer("deploy", bundle, "--stage", "canary", "--config-store",
                           store).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        out = trimmer("deploy", bundles[0], "--stage", "canary", "--config-store", store)
        one_clear_line(out, store, "Read-only file system")
        out = trimmer("rollback", "canary", "--config-store", store)
        one_clear_line(out, store, "Read-only file system")


def test_a_directory_the_writer_cannot_read_is_one_line_and_exit_1(bundles):
    if os.geteuid() != 0:
        pytest.skip("runs the writer as another user (root only)")
    top = tempfile.mkdtemp(prefix="trimmer-disk-")   # /tmp: a path nobody can walk
    try:
        os.chmod(top, 0o755)
        bundle = shutil.copy(bundles[1], top)
        os.chmod(bundle, 0o644)
        store = os.path.join(top, "store")
        assert trimmer("deploy", bundles[0], "--stage", "canary", "--config-store",
                       store).returncode == 0
        os.chmod(store, 0o700)          # root's only; the writer runs as nobody
        out = trimmer("deploy", bundle, "--stage", "canary", "--config-store", store,
                      user=65534)
        one_clear_line(out, store, "Permission denied")
    finally:
        shutil.rmtree(top)
