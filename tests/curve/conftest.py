from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.root.world import build_world
from tests.support.procs import REPO_ROOT


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def trimmer(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "signatures.cli", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """Key pairs made by `trimmer keys generate`, and the authorized directories:
    the leaf trusts the root; the root's clients directory trusts the client.
    `intruder` is trusted by nobody (until a test says so)."""
    base = tmp_path_factory.mktemp("keys")
    names = ["leaf", "root", "client", "intruder"]
    out = trimmer("keys", "generate", *[str(base / n) for n in names])
    assert out.returncode == 0, out.stderr
    k = {n: {"public": str(base / f"{n}.key"), "secret": str(base / f"{n}.key_secret")}
         for n in names}
    k["leaf_authorized"] = str(base / "leaf-authorized")
    k["root_authorized"] = str(base / "root-clients")
    os.mkdir(k["leaf_authorized"])
    os.mkdir(k["root_authorized"])
    shutil.copy(k["root"]["public"], k["leaf_authorized"])
    shutil.copy(k["client"]["public"], k["root_authorized"])
    return k
