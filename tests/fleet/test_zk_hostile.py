"""A ZooKeeper config store someone has written to by hand (issue 25): a
bundle node claiming 300,000 chunks, one that inflates to 512 MiB, a stage
record whose generation goes backwards. Each is refused, saying so, within
a bounded number of reads and bounded memory; `trimmer status` returns and
reports it; a follower keeps what it runs and counts the error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zlib

import pytest

from _trim.errors import InvalidInput
from signatures.configstore import Stages, open_config_store
from signatures.configstore.zookeeper.settings import ZooKeeperSettings
from tests.fleet.test_zk_store import FAST, follower, take
from tests.signatures.test_store import B1, B2
from tests.support.procs import REPO_ROOT

INFLATED_MIB = 512


def bundle_node(store, bundle) -> str:
    return store.zk.path("bundles", bundle.id)


def status(address: str, env: dict | None = None):
    """`trimmer status`: (exit status, stdout, stderr, its own peak RSS in MiB)."""
    proc = subprocess.Popen([sys.executable, "-m", "signatures.cli", "status", "--config-store",
                             address], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    killer = threading.Timer(60, proc.kill)
    killer.start()
    try:
        out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        _, wstatus, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = code = os.waitstatus_to_exitcode(wstatus)
    assert code >= 0, "trimmer status did not return in 60 s"
    return code, out, err, usage.ru_maxrss / 1024


def bomb() -> bytes:
    """A zlib stream of INFLATED_MIB MiB of zeros (about 0.5 MB), made in 1 MiB steps."""
    z = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    return b"".join([z.compress(block) for _ in range(INFLATED_MIB)] + [z.flush()])


@pytest.mark.parametrize("hostile", ["chunks", "inflates"])
def test_a_hostile_bundle_node_is_refused_within_its_limits(zk_server, hostile, capsys):
    address = zk_server.address()
    writer = open_config_store(address)
    try:
        Stages(writer).deploy(B1, "canary")
        *_, rss_before = status(address)
        f = follower(address, generation=1).start()
        try:
            # B2's node, written by hand before B2 is deployed (blobs are content-addressed:
            # the deploy keeps the node it finds).
            if hostile == "chunks":
                data = b"C" + json.dumps({"chunks": 300_000, "sha256": "0" * 64,
                                          "bytes": 100}).encode()
            else:
                data = b"Z" + bomb()
            writer.zk.client().create(bundle_node(writer, B2), data, makepath=True)
            t0 = time.monotonic()
            with open_config_store(address) as reader, pytest.raises(InvalidInput) as refused:
                reader.bundle(B2.id)
            took = time.monotonic() - t0
            says = "chunks, over" if hostile == "chunks" else "inflates past"
            assert says in str(refused.value), refused.value
            Stages(writer).deploy(B2, "canary", force=True)
            code, out, err, rss = status(address)
            assert code == 1 and says in err, (code, out, err)
            # The follower keeps generation 1 and counts the refusal.
            deadline = time.monotonic() + 10
            while f.errors.n == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert f.errors.n >= 1 and says in (f.last_error or ""), f.last_error
            assert f.take_config() is None and f.generation == 1
        finally:
            f.stop()
        with capsys.disabled():
            print(f"\n{hostile}: refused in {took * 1000:.0f} ms; `trimmer status` exit {code}, "
                  f"its peak RSS {rss:.0f} MiB (on the good store: {rss_before:.0f} MiB); "
                  f"{err.strip().splitlines()[-1][:300]}")
        # The 512 MiB never inflated: at most the limit (64 MiB) and a step more.
        assert rss < rss_before + 64 + 16, (rss_before, rss)
    finally:
        writer.close()


def test_a_stage_record_whose_generation_goes_backwards_is_refused(zk_server):
    address = zk_server.address()
    writer = open_config_store(address)
    try:
        Stages(writer).deploy(B1, "canary")
        node = writer.zk.path("stages", "canary")
        old, _ = writer.zk.client().get(node)
        Stages(writer).deploy(B2, "canary")
        f = follower(address, generation=2).start()
        try:
            writer.zk.client().set(node, old)       # generation 1 again, naming B1
            deadline = time.monotonic() + 10
            while f.errors.n == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert f.errors.n == 1 and "went backwards" in (f.last_error or ""), f.last_error
            assert f.take_config() is None and f.generation == 2
            Stages(writer).deploy(B1, "canary", force=True)   # a real change: generation 3
            assert take(f).active.generation == 3
        finally:
            f.stop()
    finally:
        writer.close()


def test_limits_are_settings(zk_server):
    s = ZooKeeperSettings(max_chunks=2, max_compressed_bytes=1000, max_inflated_bytes=10_000)
    assert (s.max_chunks, s.max_compressed_bytes, s.max_inflated_bytes) == (2, 1000, 10_000)
    _ = FAST


def test_writes_need_a_credential_unless_insecure(zk_server, monkeypatch, tmp_path):
    from leafproc.settings import LeafSettings
    from signatures.runtime.settings import parse
    monkeypatch.delenv("TRIMMER_ZK_INSECURE", raising=False)
    monkeypatch.delenv("TRIMMER_ZK_AUTH", raising=False)
    address = zk_server.address()
    path = str(tmp_path / "b1.json")
    B1.save(path)
    env = {k: v for k, v in os.environ.items() if k not in ("TRIMMER_ZK_INSECURE",
                                                             "TRIMMER_ZK_AUTH")}
    run = [sys.executable, "-m", "signatures.cli"]
    out = subprocess.run([*run, "deploy", path, "--stage", "canary", "--config-store", address],
                         cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1 and "TRIMMER_ZK_AUTH" in out.stderr, out
    assert "insecure" in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run([*run, "status", "--config-store", address], cwd=REPO_ROOT,
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out            # reading needs nothing
    out = subprocess.run([*run, "deploy", path, "--stage", "canary", "--config-store", address],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "TRIMMER_ZK_INSECURE": "1"})
    assert out.returncode == 0 and "INSECURE" in out.stderr, out
    # Roots and leaves following a zk:// store refuse to start without one, like open tcp binds.
    leaf = {"bind": ["ipc:///tmp/x"], "config_store": address, "repo": str(tmp_path)}
    problems = parse(LeafSettings, leaf).check()
    assert any("TRIMMER_ZK_AUTH" in p for p in problems), problems
    assert not parse(LeafSettings, {**leaf, "zookeeper": {"insecure": True}}).check()
    monkeypatch.setenv("TRIMMER_ZK_AUTH", "deployer:s3cret")
    assert not parse(LeafSettings, leaf).check()
