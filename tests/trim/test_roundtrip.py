"""encode -> decode returns exactly the selected columns, bit for bit."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _trim import Batch, ColumnSpec, Layout, Ragged, compile_plan
from _trim.format import COLUMN_NBYTES, DTYPE_CODES, HEADER_NBYTES, align_up

DTYPES = sorted(DTYPE_CODES)


@st.composite
def column_specs(draw):
    n = draw(st.integers(0, 10))
    specs = []
    for i in range(n):
        ragged = draw(st.booleans())
        shape = () if ragged or draw(st.booleans()) else (draw(st.integers(1, 6)),)
        specs.append(ColumnSpec(f"f{i}_{draw(st.sampled_from(['a', 'é', 'xyz']))}",
                                draw(st.sampled_from(DTYPES)), shape, ragged=ragged,
                                per_request=draw(st.booleans())))
    return specs


def random_column(rng, col, rows):
    def values(count, shape=()):
        raw = rng.integers(0, 256, size=count * int(np.prod(shape, dtype=np.int64)) * col.itemsize,
                           dtype=np.uint8)
        arr = raw.view(col.dtype).reshape((count,) + shape)
        return arr.astype(bool) if col.dtype == "bool" else arr
    if col.ragged:
        lengths = rng.integers(0, 5, size=rows)
        lengths[rng.random(rows) < 0.3] = 0  # empty lists are common
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        return Ragged(values(int(offsets[-1])), offsets)
    return values(rows, col.shape)


@st.composite
def batches(draw):
    specs = draw(column_specs())
    layout = Layout(specs)
    n_rows = draw(st.integers(0, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = {c.name: random_column(rng, c, 1 if c.per_request else n_rows) for c in specs}
    selected = draw(st.permutations([c.name for c in specs]).flatmap(
        lambda names: st.integers(0, len(names)).map(lambda k: names[:k])))
    return layout, n_rows, arrays, selected


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return (a.dtype == b.dtype and a.shape == b.shape
            and a.view(np.uint8).tobytes() == b.view(np.uint8).tobytes())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches())
def test_encode_decode_returns_selected_columns_bit_for_bit(impl, case):
    layout, n_rows, arrays, selected = case
    batch = Batch.from_arrays(layout, arrays, n_rows)
    plan = compile_plan(layout, selected)
    message = impl.encode(plan, batch)
    decoded = impl.decode(message)
    assert sorted(decoded) == sorted(selected)
    assert decoded.n_rows == n_rows
    for name in selected:
        col, expected = layout[name], arrays[name]
        assert decoded.is_per_request(name) == col.per_request
        if col.ragged:
            values, offsets = decoded[name]
            assert same_bits(values, np.asarray(expected.values, dtype=col.dtype))
            assert same_bits(offsets, expected.offsets)
        else:
            assert same_bits(decoded[name], np.asarray(expected, dtype=col.dtype))
            assert decoded.broadcast(name).shape == (n_rows,) + col.shape


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches())
def test_size_follows_the_documented_formula(impl, case):
    layout, n_rows, arrays, selected = case
    batch = Batch.from_arrays(layout, arrays, n_rows)
    plan = compile_plan(layout, selected)
    names_nbytes = sum(len(n.encode()) for n in selected)
    expected = align_up(HEADER_NBYTES + COLUMN_NBYTES * len(selected) + names_nbytes)
    idx = sorted(layout.index[n] for n in selected)
    runs = []
    for i in idx:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        start = int(batch.table["data_offset"][run[0]])
        end = int(batch.table["data_offset"][run[-1]] + batch.table["data_nbytes"][run[-1]])
        expected += align_up(end - start)
    assert impl.encoded_nbytes(plan, batch) == expected == len(impl.encode(plan, batch))


def test_kernel_and_reference_write_identical_bytes():
    from _trim import _kernel, _reference
    rng = np.random.default_rng(7)
    specs = [ColumnSpec(f"c{i}", DTYPES[i % len(DTYPES)], () if i % 3 else (3,),
                        per_request=i % 4 == 0) for i in range(40)]
    specs.append(ColumnSpec("ids", "int64", ragged=True))
    layout = Layout(specs)
    arrays = {c.name: random_column(rng, c, 1 if c.per_request else 9) for c in specs}
    batch = Batch.from_arrays(layout, arrays, 9)
    plan = compile_plan(layout, [c.name for c in specs[::3]] + ["ids", "c1", "c2"])
    a = np.full(_kernel.encoded_nbytes(plan, batch), 0xAB, np.uint8)  # stale bytes must not leak
    b = np.full_like(a, 0xCD)
    _kernel.encode_into(plan, batch, a)
    _reference.encode_into(plan, batch, b)
    assert a.tobytes() == b.tobytes()


def test_a_batch_buffer_is_itself_a_message(impl):
    layout = Layout([ColumnSpec("x", "float32", (2,)), ColumnSpec("u", "int64", per_request=True)])
    batch = Batch.from_arrays(layout, {"x": np.ones((3, 2), "f4"), "u": np.array([5])}, 3)
    decoded = impl.decode(batch.buffer)
    assert sorted(decoded) == ["u", "x"]
    assert decoded.broadcast("u").tolist() == [5, 5, 5]
    assert decoded.broadcast("u").strides == (0,)


@pytest.mark.parametrize("out_kind", ["bytearray", "ndarray_f4", "memoryview"])
def test_encode_into_any_writable_buffer(impl, out_kind):
    layout = Layout([ColumnSpec("a", "float32"), ColumnSpec("b", "int8", (3,))])
    batch = Batch.from_arrays(layout, {"a": np.arange(4, dtype="f4"), "b": np.ones((4, 3), "i1")}, 4)
    plan = compile_plan(layout, ["b"])
    size = impl.encoded_nbytes(plan, batch)
    backing = bytearray(size + 64)
    out = {"bytearray": backing, "ndarray_f4": np.zeros((size + 64) // 4, np.float32),
           "memoryview": memoryview(backing)[16:]}[out_kind]
    assert impl.encode_into(plan, batch, out) == size
    decoded = impl.decode(memoryview(out).cast("B")[:size])
    assert decoded["b"].tolist() == [[1, 1, 1]] * 4
