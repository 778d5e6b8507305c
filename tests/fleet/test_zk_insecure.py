"""`trimmer status` says loudly when the ZooKeeper store's nodes are open to
anyone who reaches the ensemble (written without a credential, insecure), and
never warns about writes it does not make."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.signatures.test_store import B1
from tests.support.procs import REPO_ROOT

RUN = [sys.executable, "-m", "signatures.cli"]


def trimmer(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=env, timeout=60)


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if k not in ("TRIMMER_ZK_INSECURE", "TRIMMER_ZK_AUTH")}


def test_status_says_insecure_when_the_stores_nodes_are_open(zk_server, tmp_path):
    address = zk_server.address()
    path = str(tmp_path / "b1.json")
    B1.save(path)
    env = clean_env()
    out = trimmer("deploy", path, "--stage", "canary", "--config-store", address,
                  env={**env, "TRIMMER_ZK_INSECURE": "1"})
    assert out.returncode == 0, out
    for extra in ({}, {"TRIMMER_ZK_INSECURE": "1"}):
        out = trimmer("status", "--config-store", address, env={**env, **extra})
        assert out.returncode == 0, out
        # What the store is, whoever reads it: its nodes are open.
        assert "INSECURE" in out.stdout and "INSECURE" in out.stderr, out
        assert "writable by anyone" in out.stderr and "/stages/canary" in out.stderr, out.stderr
        # Not a warning about writes: status makes none.
        assert "writes allowed" not in out.stdout + out.stderr, out


def test_status_is_quiet_about_a_store_written_with_a_credential(zk_server, tmp_path):
    address = zk_server.address()
    path = str(tmp_path / "b1.json")
    B1.save(path)
    env = {**clean_env(), "TRIMMER_ZK_AUTH": "deployer:s3cret"}
    out = trimmer("deploy", path, "--stage", "canary", "--config-store", address, env=env)
    assert out.returncode == 0, out
    for reader in (env, clean_env()):
        out = trimmer("status", "--config-store", address, env=reader)
        assert out.returncode == 0, out
        assert "INSECURE" not in out.stdout + out.stderr, out
