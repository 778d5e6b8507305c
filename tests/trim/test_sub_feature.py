"""Sub-feature columns (a model's read): the kernel's gather and narrowing
against torch's own cast, bit for bit, and against the pure-Python
reference; the receiver's rules for sliced columns (rule batch.sliced)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _trim import Batch, ColumnSpec, Layout, _kernel, _reference, compile_plan
from _trim.narrow import narrow_bits, widen
from _trim.reads import FeatureRead

from .conftest import table

TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def edge_float32_bits() -> np.ndarray:
    """Every sign/exponent/top-mantissa pattern of float32 (the top 16 bits),
    each with the low halves at bfloat16's rounding boundaries and float16's
    (bit 13), plus ties at every subnormal float16 shift."""
    high = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    lows = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000,
                     0x8001, 0xFFFF, 0xE000, 0xF000], dtype=np.uint32)
    grid = (high[:, None] | lows[None, :]).ravel()
    ties = []
    for e in range(102, 113):                      # float16 subnormals: shift 126 - e
        shift = 126 - e
        for h in (0, 1, 2, 3, (1 << (24 - shift)) - 1):
            for d in (-1, 0, 1):
                m = ((h << shift) | (1 << (shift - 1))) + d
                if 0 < m < (1 << 24):
                    m |= 1 << 23
                    ties.append((e << 23) | (m & 0x7FFFFF))
    ties = np.array(ties, dtype=np.uint32)
    return np.concatenate([grid, ties, ties | np.uint32(0x80000000)])


def torch_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    return torch.from_numpy(values).to(TORCH[dtype]).view(torch.int16).numpy().view(np.uint16)


def kernel_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` (rows x width) through a plan narrowing them, with the kernel."""
    layout = Layout([ColumnSpec("x", values.dtype.name, (values.shape[1],))])
    batch = Batch.from_arrays(layout, {"x": values}, values.shape[0])
    plan = compile_plan(layout, ["x"], {"x": FeatureRead(None, dtype)})
    out = np.empty(_kernel.encoded_nbytes(plan, batch), np.uint8)
    _kernel.encode_into(plan, batch, out)
    return np.asarray(_kernel.decode(out)["x"]).view(np.uint16).reshape(values.shape)


def assert_same_as_torch(values: np.ndarray, dtype: str, ours: np.ndarray) -> None:
    theirs = torch_bits(values.ravel(), dtype)
    ours = ours.ravel()
    nan = np.isnan(values.ravel())
    # Torch's own NaN bits depend on the code path (scalar, vectorised,
    # CUDA); ours are the value's NaN quieted, its payload cut. Every other
    # value: the same bits.
    mismatch = np.nonzero((ours != theirs) & ~nan)[0]
    assert not len(mismatch), [(values.ravel()[i], hex(ours[i]), hex(theirs[i]))
                               for i in mismatch[:5]]
    exp_mask, quiet = (0x7F80, 0x0040) if dtype == "bfloat16" else (0x7C00, 0x0200)
    assert np.all(ours[nan] & exp_mask == exp_mask) and np.all(ours[nan] & quiet)
    signs = (values.ravel()[nan].view(np.uint32 if values.dtype == np.float32 else np.uint64)
             >> (31 if values.dtype == np.float32 else 63)).astype(np.uint16)
    assert np.array_equal(ours[nan] >> 15, signs)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_float32_narrowing_is_torchs_on_every_rounding_edge(dtype):
    values = edge_float32_bits().view(np.float32)
    ours = kernel_bits(values.reshape(-1, 2), dtype)
    assert_same_as_torch(values, dtype, ours)
    assert_same_as_torch(values, dtype, narrow_bits(values, dtype))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_float64_narrowing_goes_through_float32_as_torchs_does(dtype):
    rng = np.random.default_rng(5)
    with np.errstate(invalid="ignore"):
        f32 = edge_float32_bits().view(np.float32).astype(np.float64)
    # Values just off float32's own rounding ties, where a direct cast and
    # torch's (through float32) differ; and wide ones beyond float32's range.
    ulp = np.abs(f32) * 2.0 ** -24
    with np.errstate(invalid="ignore"):
        values = np.concatenate([f32, f32 + ulp * 0.5000001, f32 - ulp * 0.4999999,
                                 1 + 2.0 ** -8 + 2.0 ** np.arange(-50, -30),
                                 [1e300, -1e300, 3.5e38, 3.4028235677973366e38, 1e-50, -1e-320],
                                 rng.standard_normal(10000) * 10.0 ** rng.integers(-45, 40, 10000)])
    ours = kernel_bits(values.reshape(-1, 1), dtype)
    assert_same_as_torch(values, dtype, ours)
    assert_same_as_torch(values, dtype, narrow_bits(values, dtype))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_widening_back_and_the_models_cast_give_the_models_bits(dtype):
    """The leaf's path: narrowed on the root, widened exactly on the leaf,
    then the model's own cast: the bits the model's cast of the original gives."""
    values = edge_float32_bits().view(np.float32)
    for to in (np.float32, np.float64):
        wide = widen(narrow_bits(values, dtype), dtype, to)
        direct, ours = torch_bits(values.astype(to), dtype), torch_bits(wide, dtype)
        nan = np.isnan(values)
        assert np.array_equal(ours[~nan], direct[~nan])
        # NaN: the model's cast decides the bits, from any NaN alike.
        assert np.array_equal(ours[nan], direct[nan])


EDGES = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1.17e-38,
                  65504.0, 65520.0, 65519.996, 6e-8, 2.0 ** -25, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8,
                  3.3895314e38, 3.4028235e38, 1.0, -2.5], dtype=np.float64)


@st.composite
def layouts_and_reads(draw):
    n_cols = draw(st.integers(1, 5))
    cols, reads = [], {}
    for i in range(n_cols):
        dtype = draw(st.sampled_from(["float32", "float64", "int64", "float16"]))
        width = draw(st.integers(1, 40))
        per_request = draw(st.booleans())
        cols.append(ColumnSpec(f"c{i}", dtype, (width,) if width > 1 or draw(st.booleans())
                               else (), per_request=per_request))
        if draw(st.booleans()):
            narrowed = (draw(st.sampled_from([None, "bfloat16", "float16"]))
                        if dtype in ("float32", "float64") else None)
            positions = (draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width))
                         if cols[-1].shape and width > 1 else None)
            read = (FeatureRead.from_positions(positions, narrowed) if positions else
                    FeatureRead(None, narrowed))
            if read.ranges == ((0, width),):
                read = FeatureRead(None, narrowed)
            if not read.whole:
                reads[f"c{i}"] = read
    names = draw(st.lists(st.sampled_from([c.name for c in cols]), min_size=1, unique=True))
    names = list(dict.fromkeys(names + sorted(reads)))
    return Layout(cols), names, reads, draw(st.integers(0, 7)), draw(st.integers(0, 2**32 - 1))


def column_values(spec: ColumnSpec, rows: int, rng) -> np.ndarray:
    shape = (1 if spec.per_request else rows,) + spec.shape
    if spec.dtype == "int64":
        return rng.integers(-2**40, 2**40, shape)
    pool = np.concatenate([EDGES, rng.standard_normal(20) * 10.0 ** rng.integers(-40, 38, 20)])
    return rng.choice(pool, shape).astype(spec.dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts_and_reads())
def test_kernel_and_reference_write_the_same_bytes_and_torch_sees_its_cast(case):
    layout, names, reads, rows, seed = case
    rng = np.random.default_rng(seed)
    arrays = {c.name: column_values(c, rows, rng) for c in layout}
    batch = Batch.from_arrays(layout, arrays, rows)
    plan = compile_plan(layout, names, reads)
    n = _kernel.encoded_nbytes(plan, batch)
    assert n == _reference.encoded_nbytes(plan, batch)
    ours, ref = np.full(n, 0xAB, np.uint8), np.full(n, 0xCD, np.uint8)
    _kernel.encode_into(plan, batch, ours)
    _reference.encode_into(plan, batch, ref)
    assert bytes(ours) == bytes(ref)
    decoded, again = _kernel.decode(ours), _reference.decode(ours)
    assert decoded.layout_key == again.layout_key
    for name in names:
        read = reads.get(name)
        got = np.asarray(decoded[name])
        assert np.array_equal(got.view(np.uint8), np.asarray(again[name]).view(np.uint8))
        assert decoded.slice_of(name) == again.slice_of(name)
        assert decoded.spec(name) == again.spec(name)
        src = arrays[name]
        if read is None:
            assert np.array_equal(got.view(np.uint8), src.view(np.uint8))
            continue
        if read.ranges is not None:
            assert decoded.slice_of(name) == (layout[name].width, read.ranges)
            src = np.concatenate([src[:, a:b] for a, b in read.ranges], axis=1)
        else:
            assert decoded.slice_of(name) is None
        if read.dtype is None:
            assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(src).view(np.uint8))
        else:
            assert decoded.spec(name)[0] == read.dtype
            assert_same_as_torch(np.ascontiguousarray(src), read.dtype, got.view(np.uint16))


def sliced_message(impl):
    layout = Layout([ColumnSpec("e", "float32", (6,)), ColumnSpec("s", "int64")])
    batch = Batch.from_arrays(layout, {"e": np.arange(12, dtype="f4").reshape(2, 6),
                                       "s": np.arange(2)}, 2)
    plan = compile_plan(layout, ["e", "s"], {"e": FeatureRead(((0, 2), (3, 5)), "bfloat16")})
    return bytearray(impl.encode(plan, batch))


def ranges_of(buf):
    start = int(table(buf)[0:1]["data_offset"][0])
    return np.frombuffer(buf, np.uint8)[start:start + 16].view("<u4")


def set_entry(field, value):
    return lambda b: table(b)[0:1].__setitem__(field, value)


def set_ranges(*values):
    return lambda b: ranges_of(b).__setitem__(slice(0, 4), list(values))


SLICE_CASES = {
    "sliced scalar": (set_entry("flags", 8), "only a vector column can be sliced"),
    "full width too small": (set_entry("reserved", 4), "sliced from 4 positions but carries 4"),
    "ranges out of order": (set_ranges(3, 5, 0, 2), "not sorted"),
    "ranges adjacent": (set_ranges(0, 2, 2, 4), "non-adjacent"),
    "range past the width": (set_ranges(0, 2, 5, 7), r"within \[0, 6\]"),
    "ranges hold other count": (set_ranges(0, 1, 3, 5), "hold 3 positions, width says 4"),
    "no room for ranges": (set_entry("data_nbytes", 16), "data is 16 bytes|ranges take"),
}


def test_a_sliced_message_round_trips(impl):
    buf = sliced_message(impl)
    d = impl.decode(buf)
    assert d.slice_of("e") == (6, ((0, 2), (3, 5)))
    assert d.spec("e") == ("bfloat16", (4,), False, False)
    assert np.array_equal(widen(np.asarray(d["e"]), "bfloat16", np.float32),
                          np.array([[0, 1, 3, 4], [6, 7, 9, 10]], np.float32))


@pytest.mark.parametrize("case", sorted(SLICE_CASES))
def test_sliced_columns_break_no_rule_unnoticed(impl, case):
    mutate, message = SLICE_CASES[case]
    buf = sliced_message(impl)
    mutate(buf)
    with pytest.raises(ValueError, match=message):
        impl.decode(buf)


def test_a_read_that_does_not_fit_the_layout_is_refused_at_compile():
    layout = Layout([ColumnSpec("e", "float16", (6,)), ColumnSpec("r", "int64", ragged=True)])
    with pytest.raises(ValueError, match="cannot narrow"):
        compile_plan(layout, ["e"], {"e": FeatureRead(None, "bfloat16")})
    with pytest.raises(ValueError, match="ragged"):
        compile_plan(layout, ["r"], {"r": FeatureRead(None, "float16")})
    with pytest.raises(ValueError, match="does not send"):
        compile_plan(layout, ["r"], {"e": FeatureRead(((0, 2),))})
