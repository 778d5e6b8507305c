"""A leaf's per-request work before the forward pass: decode and signature check.

A leaf decodes every message into views and checks them against the model's
signature while holding the GIL, so this cost caps a leaf's request rate
whatever its GPU. Messages are trimmed batches of the recommender mix
(`scenarios.py`) at 256 candidates, as a root sends them.

Targets, each a ratio against a baseline measured in this run:
  decode:  the kernel's views >= 5x faster than validating in the kernel and
           building the views in Python (the leaf's path before; per column, a
           few numpy calls)
  check:   a layout already accepted >= 10x faster than the full check

Quick mode (``TRIMMER_BENCH_QUICK=1 ... --benchmark-disable``, `make test`;
bench/quick.py): each path runs once per case and must accept the message
(the kernel's views and the Python ones name the same columns); the ratios
need timed rounds and are not asserted.
"""
import numpy as np
import pytest
from quick import best_s, goals_asserted
from scenarios import scenario

import _trim
from _trim import _kernel
from _trim.decoded import build_views
from leafproc.input_check import SignatureCheck, check
from signatures.repository.module_info import TensorSpec

ROWS = 256
# (features in the schema, fraction a model reads): ~100, ~500 and ~950 columns.
CASES = {"100-columns": (1000, 0.095), "500-columns": (2000, 0.24), "950-columns": (3000, 0.30)}
TARGETS = {"decode": 5.0, "check": 10.0}
best: dict = {}


@pytest.fixture(scope="module", params=sorted(CASES))
def message(request):
    n_features, fraction = CASES[request.param]
    _, batch, plan = scenario(n_features, ROWS, fraction)
    buf = np.empty(_trim.encoded_nbytes(plan, batch), np.uint8)
    _trim.encode_into(plan, batch, buf)
    decoded = _kernel.decode(buf)
    inputs = [TensorSpec(name, dtype, shape, "ragged" if ragged else "dense", per_request)
              for name, (dtype, shape, ragged, per_request) in
              ((n, decoded.spec(n)) for n in decoded)]
    return request.param, buf, decoded, inputs


def measured(benchmark, case, what, impl, ratio_of=None):
    benchmark.group = f"{case} {what}"
    benchmark.extra_info["columns"] = case
    if best_s(benchmark) is None:
        return   # --benchmark-disable: nothing timed
    best[case, what, impl] = best_s(benchmark)
    if ratio_of is not None and (case, what, ratio_of) in best:
        ratio = best[case, what, ratio_of] / best[case, what, impl]
        benchmark.extra_info[f"speedup_vs_{ratio_of}"] = round(ratio, 1)
        if goals_asserted():
            assert ratio >= TARGETS[what], f"{case}: {what} {impl} is {ratio:.1f}x {ratio_of}"


def python_views(buf):
    return build_views(buf, *_kernel.parse(buf))


def test_decode_python_views(benchmark, message):
    case, buf, decoded, _ = message
    views = benchmark(python_views, buf)
    assert sorted(views) == sorted(decoded), case
    measured(benchmark, case, "decode", "python_views")


def test_decode_kernel(benchmark, message):
    case, buf, *_ = message
    benchmark(_kernel.decode, buf)
    measured(benchmark, case, "decode", "kernel", ratio_of="python_views")


def fresh(buf):
    """A new decode per round: a real request's layout key is a new bytes
    object whose hash nobody has computed yet."""
    return lambda: ((_kernel.decode(buf), ROWS), {})


def test_check_full(benchmark, message):
    case, buf, decoded, inputs = message
    benchmark.pedantic(lambda d, rows: check(d, inputs, rows), setup=fresh(buf), rounds=300)
    measured(benchmark, case, "check", "full")


def test_check_accepted_layout(benchmark, message):
    case, buf, decoded, inputs = message
    checker = SignatureCheck(inputs)
    checker(decoded, ROWS)
    benchmark.pedantic(checker, setup=fresh(buf), rounds=300)
    measured(benchmark, case, "check", "remembered", ratio_of="full")
