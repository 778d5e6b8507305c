"""The [torchrec] extra: pinned in pyproject.toml to a pair `torchrec_runtime`
knows, refused with a message saying what to install when missing or
mismatched, and never imported by the base install's modules."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from signatures.repository import torchrec_runtime as rt
from signatures.repository.artifacts import check_loadable
from signatures.repository.module_info import Artifact

ROOT = Path(__file__).resolve().parents[2]


def test_the_extra_pins_a_pair_the_runtime_knows():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["torchrec"]
    pins = dict(r.split("==") for r in extra if "==" in r)
    assert rt.PAIRS[pins["torchrec"]] == pins["fbgemm-gpu-cpu"]


@pytest.mark.parametrize("installed, message", [
    ({}, "torchrec, which is not installed"),
    ({"torchrec": "1.8.0"}, "without fbgemm-gpu(-cpu)"),
    ({"torchrec": "1.9.0", "fbgemm-gpu-cpu": "1.9.0"}, "not a pair known to load together"),
    ({"torchrec": "1.8.0", "fbgemm-gpu-cpu": "1.9.0"}, "not a pair known to load together"),
    ({"torchrec": "1.8.0", "fbgemm-gpu-cpu": "1.8.0", "fbgemm-gpu": "1.9.0"}, "one package"),
])
def test_a_missing_or_mismatched_pair_is_refused_saying_what_to_install(
        monkeypatch, installed, message):
    monkeypatch.setattr(rt, "_version", installed.get)
    monkeypatch.setattr(rt, "_loaded", None)
    with pytest.raises(rt.TorchRecUnavailable) as e:
        rt.require()
    assert message in str(e.value)
    if message != "one package":
        assert "pip install 'feature-trimmer[torchrec]'" in str(e.value)
    # A leaf refuses the version before opening its file, with the same words.
    from _trim.errors import Refused
    with pytest.raises(Refused, match="cannot load a TorchRec TorchScript"):
        check_loadable(Artifact(runtime="torchrec"), "cpu")


def test_the_base_modules_import_no_torchrec():
    probe = ("import sys\n"
             "import signatures.derive.exporter, signatures.repository.artifacts, leafproc.worker\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchrec', 'fbgemm_gpu')))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_the_demo_takes_a_count_or_realistic():
    from rootproc.demo import parse_args
    assert parse_args(["--models", "realistic"]).models == "realistic"
    assert parse_args(["--models", "3"]).models == 3
    with pytest.raises(SystemExit):
        parse_args(["--models", "lots"])
    with pytest.raises(SystemExit):
        parse_args(["--models", "0"])
