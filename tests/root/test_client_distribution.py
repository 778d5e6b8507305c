"""The scoring client as its own distribution (client/, `feature-trimmer-client`):
built from this checkout into a wheel without torch, the kernel or the root,
imported from that wheel alone in a fresh interpreter where any import of
torch raises, and scoring against a real root and leaves."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient

from .conftest import leaves_running, spawn_root
from .world import CANDIDATE_IDS, MODELS, USER_IDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]
SOURCES = ("client", "_trim", "rootproc")
BUILT = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "build", "*.egg-info")

SCRIPT = r'''
import asyncio, importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"blocked: {name} imported by the scoring client")

sys.meta_path.insert(0, NoTorch())
import numpy as np
from rootproc.client import AsyncScoringClient, ScoringClient, ScoringError

endpoint, user, cands = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
with ScoringClient([endpoint], timeout_ms=30000) as client:
    res = client.score(user, np.array(cands), deadline_ms=10000).raise_for_error()
    missing = client.score(user, np.array(cands), models=["no_such_model"], deadline_ms=10000)
    try:
        missing.raise_for_error()
        kind = None
    except ScoringError as exc:
        kind = exc.kind

async def main():
    client = AsyncScoringClient([endpoint], timeout_ms=30000)
    try:
        results = await asyncio.gather(*(client.score(user, np.array(cands), deadline_ms=10000)
                                         for _ in range(3)))
    finally:
        client.close()
    return [sorted(r.scores) for r in results]

import rootproc.client
print(json.dumps({
    "scores": {m: s.tolist() for m, s in res.scores.items()},
    "unknown": kind,
    "async": asyncio.run(main()),
    "client_file": rootproc.client.__file__,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "signatures", "leafproc")),
}))
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("client-src")
    for name in SOURCES:
        shutil.copytree(REPO / name, src / name, ignore=BUILT)
    out = tmp_path_factory.mktemp("client-wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(src / "client"), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("feature_trimmer_client-*.whl")
    return path


def test_the_wheel_holds_the_client_and_needs_no_torch(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    requires = sorted(line.split(":", 1)[1].strip().split(">")[0].split("=")[0]
                      for line in meta.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["lz4", "numpy", "orjson", "pyzmq"]
    modules = {n for n in names if n.endswith(".py")}
    assert "rootproc/client/scoring_client.py" in modules
    assert {n.split("/")[0] for n in modules} == {"_trim", "rootproc"}
    assert not [n for n in modules if n.startswith("rootproc/") and not n.startswith("rootproc/client/")
                and n != "rootproc/__init__.py"]
    assert "rootproc/client/loadgen.py" not in modules   # `trimmer score` reads feature stores
    assert not [n for n in names if n.endswith((".so", ".pyx", ".c"))]
    version = next(line for line in meta.splitlines() if line.startswith("Version:")).split()[1]
    import tomllib
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_installed_client_scores_without_torch(wheel, world, tmp_path_factory, process_runner):
    site = tmp_path_factory.mktemp("client-site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    with leaves_running(tmp_path_factory, world, ("tcp",)) as endpoints:
        root = spawn_root(process_runner, world, endpoints["tcp"], transport="tcp")
        rng = np.random.default_rng(5)
        user, cands = int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, size=24, replace=False)
        # Only the wheel's modules and the interpreter's site-packages (numpy, zmq ...):
        # not this checkout, whatever PYTHONPATH the test runs with.
        done = subprocess.run([sys.executable, "-c", SCRIPT, root.endpoint, str(user),
                               json.dumps(cands.tolist())],
                              env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                              cwd=site, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout)
        with ScoringClient(root.endpoint) as client:   # this checkout's client, as reference
            expected = client.score(user, cands, deadline_ms=10000).raise_for_error()
    assert out["client_file"].startswith(str(site))
    assert out["loaded"] == []
    assert sorted(out["scores"]) == sorted(MODELS)
    for model, scores in out["scores"].items():
        np.testing.assert_array_equal(np.asarray(scores, dtype=np.float32), expected.scores[model])
    assert out["unknown"] == "unknown_model"
    assert out["async"] == [sorted(MODELS)] * 3
