"""The record writer's compiled loops (`_trim.records._writer`) against their numpy definitions, bit for bit.

Synthetic values (rootproc/featurestore/synth.py) and record packing (_trim/records/layout.py)
are written by the record writer, whose numpy reference (_trim/records/writer_reference.py,
``TRIMMER_IMPL=reference``) is the definition; the compiled writer must give the same
records. `make asan` runs these under AddressSanitizer and UBSan.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _trim import Ragged
from _trim.records import writer_reference
from _trim.records.layout import RawField, RecordLayout
from rootproc.demo.schema_gen import demo_schema
from rootproc.featurestore import synth
from signatures.schema import FeatureSchema
from tests.root.world import SCHEMA
from tests.trim.test_records import schemas

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("schema", [demo_schema(0, 0.05), demo_schema(3, 0.02), SCHEMA],
                         ids=["demo", "demo-seed-3", "world"])
@pytest.mark.parametrize("source", ["user", "candidate"])
def test_synthetic_records_are_the_numpy_ones(schema, source):
    schema = FeatureSchema.from_dict(schema)
    layout = RecordLayout.from_schema(schema, source)
    ids = np.concatenate([np.arange(0, 300), np.array([-5, 2**40 + 7, 2**62])])
    kernel = synth.Synthesizer(schema, layout, 4, impl="kernel").records(ids)
    numpy = synth.Synthesizer(schema, layout, 4, impl="reference").records(ids)
    assert np.array_equal(kernel.offsets, numpy.offsets)
    assert bytes(kernel.buffer) == bytes(numpy.buffer)


def test_rounding_matches_numpy_rint_everywhere():
    """The values' rint is computed without a call (so that it vectorises):
    checked against the reference's numpy mapping on every magnitude, halves, signed
    zeros and the specials."""
    from _trim.records import _writer as _load
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-3, 12, 20000),
                        np.arange(-40, 40) / 2, [0.0, -0.0, -0.4, np.inf, -np.inf, np.nan,
                                                 2**23 - 0.5, -(2**23) + 0.5, 2**22 + 0.5,
                                                 2**24 + 1]])
    x = x.astype(np.float32)
    n = len(x)
    # The mapping is rint(u * a + heavy + c) * q: with a = b = 0, q = 1 it is rint(c)
    # (give or take the sign of a zero, which u * 0 + 0 + c decides, as numpy's does).
    params = {k: np.zeros(n, np.float32) for k in ("p0", "a", "b", "default", "scale_q2")}
    params["q"] = np.ones(n, np.float32)
    params["c"] = x
    rows, cols, cold = np.zeros(1, np.uint32), np.arange(n, dtype=np.uint32), np.zeros(1, np.float32)
    writer = _load.RecordWriter((4 * n + 7) & ~7, [(0, cols, params, False)], [], [])
    chunk = writer.chunk(1, rows, cold, [], [])
    chunk.write(0, 1)
    out = chunk.result()[0][:4 * n].view(np.float32).reshape(1, n)
    want = writer_reference.uniform(rows, cols, np.empty((1, n), np.uint32),
                                    np.empty((1, n), np.float32))
    writer_reference.draw_values(want, params, cold[:, None], np.empty((2, 1, n), np.float32))
    assert out.tobytes() == want.tobytes()
    finite = np.isfinite(x)
    assert np.array_equal(out[0][finite], np.rint(x[finite]))


@st.composite
def packs(draw):
    n_ragged = draw(st.integers(1, 4))
    fields = [RawField(f"d{i}", draw(st.sampled_from(["float32", "int64", "int8", "float16"])),
                       draw(st.integers(1, 3)), True) for i in range(draw(st.integers(0, 3)))]
    fields += [RawField(f"r{i}", draw(st.sampled_from(["int64", "int32", "uint8", "float16"])),
                        ragged=True) for i in range(n_ragged)]
    layout = RecordLayout("candidate", fields)
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    columns = {}
    for f in layout.fields.values():
        if f.ragged:
            lengths = rng.integers(0, 6, n)
            lengths[rng.random(n) < 0.3] = 0
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            skip = int(rng.integers(0, 3))   # values that start past the front of their array
            values = rng.integers(0, 120, int(offsets[-1]) + skip + 2).astype(f.dtype)
            columns[f.name] = Ragged(values, offsets + skip)
        else:
            columns[f.name] = rng.integers(0, 100, (n, f.width)).astype(f.dtype)
    return layout, n, columns


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(packs())
def test_packed_records_are_the_numpy_ones(case):
    layout, n, columns = case
    fixed = np.zeros(n, dtype=layout.dtype)
    for name, col in columns.items():
        if not layout.fields[name].ragged:
            fixed[name] = col.reshape((n,) + layout.fields[name].shape)
    ragged = {f.name: columns[f.name] for f in layout.ragged}
    kernel = layout.pack(fixed.copy(), ragged, impl="kernel")
    numpy = layout.pack(fixed.copy(), ragged, impl="reference")
    assert np.array_equal(kernel.offsets, numpy.offsets)
    assert bytes(kernel.buffer) == bytes(numpy.buffer)
    decoded = layout.decode_many(list(kernel))
    for f in layout.ragged:
        want = columns[f.name]
        lists = [want.values[want.offsets[i]:want.offsets[i + 1]] for i in range(n)]
        got = decoded[f.name]
        assert [got.values[got.offsets[i]:got.offsets[i + 1]].tolist() for i in range(n)] == \
            [x.tolist() for x in lists]


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_packing_refuses_offsets_that_do_not_fit(impl):
    layout = RecordLayout("candidate", [RawField("r", "int64", ragged=True)])
    fixed = np.zeros(2, dtype=layout.dtype)
    with pytest.raises(ValueError, match="offsets do not fit its 3 values|offsets do not fit"):
        layout.pack(fixed, {"r": (np.arange(3), np.array([0, 2, 5]))}, impl=impl)
    with pytest.raises(ValueError, match="offsets"):
        layout.pack(fixed, {"r": (np.arange(3), np.array([0, 2, 1]))}, impl=impl)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(schemas(), st.integers(0, 2**31), st.integers(0, 40))
def test_synthetic_records_of_any_schema_are_the_numpy_ones(schema, seed, n):
    """Every dtype, vectors, ragged lists of every kind, shared raw fields,
    defaults: the compiled writer's records are the reference's, bit for bit."""
    ids = np.concatenate([np.arange(n), [-1, 2**40 + 3]])
    for source in ("user", "candidate"):
        layout = RecordLayout.from_schema(schema, source)
        kernel = synth.Synthesizer(schema, layout, seed, impl="kernel").records(ids)
        numpy = synth.Synthesizer(schema, layout, seed, impl="reference").records(ids)
        assert np.array_equal(kernel.offsets, numpy.offsets)
        assert bytes(kernel.buffer) == bytes(numpy.buffer)
