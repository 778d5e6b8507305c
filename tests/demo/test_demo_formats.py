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


def mode_result(mode, wire_bytes, ok, cpu, p90, errors=None, model_errors=None):
    return {"mode": mode, "wire_bytes": wire_bytes, "ok": ok, "requests": ok, "throughput_rps": 1.0,
            "latency_ms": {"p50": p90, "p90": p90, "p99": p90}, "root_cpu_ms_per_request": cpu,
            "errors": errors or {}, "model_errors": model_errors or {}}


TABLE_ARGS = SimpleNamespace(candidates=8, requests=24, concurrency=4)
TABLE_SCENARIO = SimpleNamespace(schema=[1, 2], models={"ctr@1": 0.5}, placement={"leaf-0": []},
                                 model_format="torchscript")


def table_row(table: str, label: str) -> list[str]:
    row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_no_ratio_against_a_baseline_that_had_errors():
    """A baseline whose models mostly failed is cheap: "trimmed: +197% network
    vs all" compared against it says nothing. The table marks it instead."""
    table = render_table([mode_result("all", 100, 24, 10.0, 50.0, model_errors={"unavailable": 84}),
                          mode_result("trimmed", 40, 24, 5.0, 20.0)], TABLE_ARGS, TABLE_SCENARIO)
    trimmed = table_row(table, "trimmed")
    assert trimmed[2] == trimmed[8] == trimmed[9] == "n/a†", table
    assert "† no comparison: all features had 84 failed model results (unavailable 84)" in table
    # A row with failures of its own is not compared either; clean rows are.
    table = render_table([mode_result("all", 100, 24, 10.0, 50.0),
                          mode_result("trimmed", 40, 24, 5.0, 20.0, errors={"deadline": 2}),
                          mode_result("trimmed-shm", 40, 24, 4.0, 10.0)], TABLE_ARGS, TABLE_SCENARIO)
    assert table_row(table, "trimmed")[2] == "n/a†"
    assert "trimmed had 2 failed requests (deadline 2)" in table
    assert table_row(table, "trimmed + shared memory")[2] == "-60%"


def test_a_run_with_failed_results_says_so_and_fails():
    from rootproc.demo import failures
    clean = [mode_result("all", 100, 24, 10.0, 50.0)]
    assert failures(clean) == []
    lines = failures(clean + [mode_result("trimmed", 40, 24, 5.0, 20.0,
                                          model_errors={"unavailable": 10, "deadline": 1})])
    assert lines == ["trimmed: 11 failed model results (unavailable 10, deadline 1)"]
