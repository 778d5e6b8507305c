"""The compiled record program against the numpy reference: the same batch, bit for bit.

Random schemas (every dtype, scalars, vectors, ragged lists, every transform
with random parameters, raw fields shared between features, cross
features), stores written for them or for another schema (other raw dtypes,
fields missing), records with NaNs, infinities, signed zeros and
subnormals: `Preprocessor(impl="kernel")` and `impl="reference"` must give
identical batch buffers, and refuse corrupt records with the same message.
`make asan` runs these under AddressSanitizer and UBSan;
``TRIMMER_RECORDS_EXAMPLES`` sets how many random cases (default 300).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _trim import DTYPE_CODES, Ragged
from _trim.records.layout import RawField, RecordLayout
from rootproc.preprocess.preprocessor import Preprocessor
from signatures.schema import FeatureSchema

# NaNs and overflows are the point: numpy's warnings about them are not.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
DTYPES = sorted(DTYPE_CODES)
FLOATS = ["float16", "float32", "float64"]
NUMBER = st.one_of(st.integers(-5, 120), st.floats(-50, 150, allow_nan=False, width=32))


@st.composite
def transforms(draw, dtype: str, shaped: bool):
    ops = ["identity"]
    if dtype in FLOATS:
        ops += ["log1p", "clip", "standardize"]
    if dtype in ("int64", "int32") and not shaped:
        ops.append("hash")
    op = draw(st.sampled_from(ops))
    if op == "clip":
        lo, hi = sorted([draw(NUMBER), draw(NUMBER)])
        return {"op": "clip", "lo": lo, "hi": hi}
    if op == "standardize":
        return {"op": op, "mean": draw(NUMBER), "std": draw(st.floats(0.25, 40, width=32))}
    if op == "hash":
        return {"op": op, "buckets": draw(st.sampled_from([1, 7, 1000, (1 << 62) + 3]))}
    return {"op": op}


@st.composite
def schemas(draw):
    feats, vectors = [], []
    for i in range(draw(st.integers(1, 9))):
        source = draw(st.sampled_from(["user", "candidate"]))
        kind = draw(st.sampled_from(["scalar", "vector", "ragged"]))
        dtype = draw(st.sampled_from(DTYPES))
        shape = [draw(st.integers(1, 5))] if kind == "vector" else []
        f = {"name": f"f{i}", "dtype": dtype, "shape": shape, "source": source,
             "kind": "ragged" if kind == "ragged" else "dense",
             "transform": draw(transforms(dtype, bool(shape)))}
        if draw(st.booleans()):   # share a raw field with an earlier feature of the same shape
            same = [g for g in feats if (g["source"], g["shape"], g["kind"]) == (source, shape, f["kind"])]
            if same:
                f["raw"] = draw(st.sampled_from(same)).get("raw", draw(st.sampled_from(same))["name"])
        if draw(st.booleans()) and f["transform"]["op"] != "hash":
            f["default"] = ([draw(st.integers(0, 3)) for _ in range(draw(st.integers(0, 3)))]
                            if kind == "ragged" else [1] * shape[0] if shape else draw(st.integers(0, 9)))
        if f["transform"]["op"] == "hash" and draw(st.booleans()):
            f["default"] = [5, -7] if kind == "ragged" else 3
        feats.append(f)
        if shape and dtype in FLOATS and "raw" not in f:
            vectors.append(f)
    for j in range(draw(st.integers(0, 2))):
        pairs = [(a, b) for a in vectors for b in vectors if a["shape"] == b["shape"]]
        if pairs:
            a, b = draw(st.sampled_from(pairs))
            feats.append({"name": f"x{j}", "dtype": draw(st.sampled_from(FLOATS)), "source": "cross",
                          "transform": {"op": "dot", "inputs": [a["name"], b["name"]]}})
    return FeatureSchema.from_dict({"format": 1, "features": feats})


def float_bits(rng, dtype, count):
    """Values with every special a float field meets: NaNs (payloads too),
    infinities, signed zeros, subnormals, and ordinary numbers."""
    dt = np.dtype(dtype)
    out = (rng.standard_normal(count) * rng.choice([0.5, 20, 1e4], count)).astype(dt)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1.0, -1.5, 100.0,
                         np.finfo(dt).tiny / 4, np.finfo(dt).max], dtype=dt)
    pick = rng.random(count) < 0.3
    out[pick] = rng.choice(specials, int(pick.sum()))
    raw = out.view(f"u{dt.itemsize}")
    payload = rng.random(count) < 0.05   # NaNs with other payloads, quiet and signalling
    mant = {2: 10, 4: 23, 8: 52}[dt.itemsize]
    exp_mask = ((1 << (8 * dt.itemsize - 1 - mant)) - 1) << mant
    raw[payload] = (exp_mask | rng.integers(1, 1 << min(mant, 62), int(payload.sum()))).astype(raw.dtype)
    return out


def raw_values(rng, field: RawField, count: int, tame: bool):
    """``count`` elements of ``field``; ``tame``: finite and in [0, 100], for a
    float field some feature casts to an integer (out of range is undefined)."""
    dt = np.dtype(field.dtype)
    if dt.kind == "f":
        return rng.uniform(0, 100, count).astype(dt) if tame else float_bits(rng, dt, count)
    if dt == np.bool_:
        return rng.random(count) < 0.5
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, count, dtype=dt, endpoint=True)


def store_layouts(draw_data, schema):
    """The schema's record layouts, or (drawn) another schema's: other raw
    dtypes, some fields missing."""
    out = {}
    for s in ("user", "candidate"):
        layout = RecordLayout.from_schema(schema, s)
        fields = []
        for f in layout.fields.values():
            if draw_data.draw(st.integers(0, 9)) == 0:
                continue   # a field this store does not have
            if draw_data.draw(st.integers(0, 3)) == 0:
                f = RawField(f.name, draw_data.draw(st.sampled_from(DTYPES)), f.width, f.vector,
                             f.ragged)
            fields.append(f)
        out[s] = RecordLayout(s, fields)
    return out


def records(rng, schema, layout: RecordLayout, n: int) -> list[bytes]:
    ints = {f.raw_name for f in schema.features.values()
            if f.source == layout.source and (np.dtype(f.dtype).kind in "iub" or
                                              f.transform.get("op") == "hash")}
    columns = {}
    for f in layout.fields.values():
        tame = f.name in ints
        if f.ragged:
            lengths = rng.integers(0, 4, n)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            columns[f.name] = Ragged(raw_values(rng, f, int(offsets[-1]), tame), offsets)
        else:
            columns[f.name] = raw_values(rng, f, n * f.width, tame).reshape((n,) + f.shape)
    return layout.encode_many(n, columns)


def first_difference(schema, layouts, a, b) -> str:
    at = int(np.nonzero(a.buffer != b.buffer)[0][0])
    table = a.table
    for i, col in enumerate(a.layout):
        start = int(table["data_offset"][i])
        if start <= at < start + ((int(table["data_nbytes"][i]) + 7) & ~7):
            store_fields = {s: [(f.name, f.dtype) for f in lay.fields.values()]
                            for s, lay in layouts.items()}
            return (f"column {col} differs at byte {at - start} "
                    f"(kernel {a.buffer[at - 4:at + 4]}, reference {b.buffer[at - 4:at + 4]}); "
                    f"feature {schema[col.name]}; store fields {store_fields}")
    return f"byte {at} differs, outside the columns"


def both(schema, names, layouts):
    try:
        ref = Preprocessor(schema, names, layouts, impl="reference")
    except ValueError as exc:   # a parameter that does not fit its dtype: both refuse it
        with pytest.raises(ValueError, match="does not fit"):
            Preprocessor(schema, names, layouts, impl="kernel")
        assert "does not fit" in str(exc)
        return None, None
    return Preprocessor(schema, names, layouts, impl="kernel"), ref


@settings(max_examples=int(os.environ.get("TRIMMER_RECORDS_EXAMPLES", 300)), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(schemas(), st.data())
def test_kernel_and_reference_build_the_same_batch_bit_for_bit(schema, data):
    layouts = store_layouts(data, schema) if data.draw(st.booleans()) else \
        {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    names = data.draw(st.sets(st.sampled_from(schema.names), min_size=1)) \
        if data.draw(st.booleans()) else None
    kernel, ref = both(schema, names, layouts)
    if kernel is None:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.integers(0, 6))
    users = records(rng, schema, layouts["user"], 2)
    cands = records(rng, schema, layouts["candidate"], max(1, n))
    picked = [cands[int(i)] for i in rng.integers(0, len(cands), n)]
    # bytes, memoryviews (as LMDB hands them out) and bytearrays alike
    as_views = [memoryview(bytearray(r)) for r in picked]
    for user_records, cand_records in (([users[0]], picked), ([memoryview(users[1])], as_views)):
        a = kernel.build(user_records, cand_records)
        b = ref.build(user_records, cand_records)
        assert a.layout == b.layout and a.n_rows == b.n_rows == n
        assert bytes(a.buffer) == bytes(b.buffer), first_difference(schema, layouts, a, b)


def test_the_demo_schema_builds_the_same_batch():
    from rootproc.demo.schema_gen import demo_schema
    from rootproc.featurestore.synth import synth_chunks
    schema = FeatureSchema.from_dict(demo_schema(0, 0.1))
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    (_, users), = synth_chunks(schema, layouts["user"], 3, seed=2)
    (_, cands), = synth_chunks(schema, layouts["candidate"], 300, seed=2)
    for names in (None, schema.names[::3]):
        kernel, ref = both(schema, names, layouts)
        a = kernel.build(users[1:2], list(cands))
        assert bytes(a.buffer) == bytes(ref.build(users[1:2], list(cands)).buffer)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_corrupt_records_are_refused_alike(impl):
    schema = FeatureSchema.from_dict({"format": 1, "features": [
        {"name": "a", "dtype": "float32", "source": "candidate"},
        {"name": "ids", "dtype": "int64", "kind": "ragged", "source": "candidate"},
        {"name": "u", "dtype": "float32", "source": "user"}]})
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    pre = Preprocessor(schema, None, layouts, impl=impl)
    user = layouts["user"].encode({"u": 1.0})
    good = layouts["candidate"].encode({"a": 2.0, "ids": [1, 2, 3]})
    assert pre.build([user], [good]).column("ids").values.tolist() == [1, 2, 3]
    for bad, message in ((good[:3], "shorter than its fixed part"),
                         (good[:-8], "ragged lengths disagree with its size"),
                         (good + bytes(8), "ragged lengths disagree with its size")):
        with pytest.raises(ValueError, match=f"corrupt candidate record: {message}"):
            pre.build([user], [good, bad])
    with pytest.raises(ValueError, match="corrupt user record: expected 8 bytes each"):
        pre.build([user + b"x"], [good])
    with pytest.raises(ValueError, match="one user record"):
        pre.build([user, user], [good])


def test_the_program_and_the_plan_share_their_dtype_codes():
    from _trim.records._program import RAW_CODES
    from rootproc.preprocess.steps import RAW_CODES as PLAN_CODES
    assert RAW_CODES == PLAN_CODES


def test_a_program_must_fill_every_column_once():
    from _trim import ColumnSpec, Layout
    from _trim.records._program import RecordProgram
    layout = Layout([ColumnSpec("a", "float32"), ColumnSpec("b", "float32")])
    step = {"kind": "dense", "column": 0, "source": 1, "raw_offset": 0}
    with pytest.raises(ValueError, match="not filled exactly once: b"):
        RecordProgram(layout, [(8, []), (8, [])], [step])
    with pytest.raises(ValueError, match="outside the fixed part"):
        RecordProgram(layout, [(8, []), (8, [])], [step, {**step, "column": 1, "raw_offset": 6}])


@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=1, max_size=50),
       st.one_of(st.integers(1, 1 << 64 - 1), st.sampled_from(
           [1, 2, 3, 7, 1 << 20, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, (1 << 63) - 1, 1 << 63,
            (1 << 63) + 1, (1 << 64) - 1, 1000, 512, 100_000, 1_000_000])))
def test_the_compiled_hash_divides_exactly(ids, buckets):
    from _trim.records._program import hash_ids as compiled
    from tests.root.world import bucket
    got = compiled(np.array(ids, dtype=np.int64), buckets)
    assert [int(x) & ((1 << 64) - 1) for x in got] == [bucket(x, buckets) for x in ids]
