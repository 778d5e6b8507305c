"""Which format the demo serves its models in (TRIMMER_DEMO_MODEL_FORMAT),
and its table saying so. The demo run itself is tests/demo/test_demo.py."""
from types import SimpleNamespace

import pytest

from rootproc.demo.render import render_table
from rootproc.demo.scenario import FORMAT_ENV, model_format
from signatures.repository import artifacts


def test_default_is_torchscript_and_each_format_is_taken(monkeypatch):
    monkeypatch.delenv(FORMAT_ENV, raising=False)
    assert model_format() == "torchscript"
    for fmt in ("torchscript", "export", "aoti"):
        monkeypatch.setenv(FORMAT_ENV, fmt)
        assert model_format(log=lambda m: None) == (fmt if artifacts.unsupported(fmt) is None
                                                    else "torchscript")
    monkeypatch.setenv(FORMAT_ENV, "auto")
    assert model_format() == ("aoti" if artifacts.unsupported("aoti") is None else "torchscript")
    monkeypatch.setenv(FORMAT_ENV, "onnx")
    with pytest.raises(ValueError, match="TRIMMER_DEMO_MODEL_FORMAT='onnx': expected one of "
                                         "torchscript, export, aoti or auto"):
        model_format()


def test_table_says_which_format_served():
    result = {"mode": "all", "wire_bytes": 10, "ok": 1, "throughput_rps": 1.0,
              "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0}, "root_cpu_ms_per_request": 1.0,
              "errors": {}, "model_errors": {}}
    args = SimpleNamespace(candidates=8, requests=1, concurrency=1)
    scenario = SimpleNamespace(schema=[1, 2], models={"ctr@1": 0.5}, placement={"leaf-0": []},
                               model_format="aoti")
    assert "Models, served as AOTInductor packages" in render_table([result], args, scenario)
