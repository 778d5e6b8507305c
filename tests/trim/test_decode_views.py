"""The compiled decoder builds the same views the reference does: same
values, dtypes, shapes, flags and specs; they keep their buffer alive, follow
its writability, and decoding leaks nothing."""
import gc
import sys

import numpy as np
import pytest

from _trim import Batch, ColumnSpec, Layout, Ragged, _kernel, _reference, compile_plan

from .conftest import table as column_table

ROWS = 5


def message(misalign: int = 0):
    layout = Layout([
        ColumnSpec("score", "float32"),
        ColumnSpec("emb", "float16", (3,)),
        ColumnSpec("user", "int64", per_request=True),
        ColumnSpec("ids", "int64", ragged=True),
        ColumnSpec("tags", "int32", ragged=True, per_request=True),
        ColumnSpec("flag", "bool"),
    ])
    rng = np.random.default_rng(3)
    arrays = {
        "score": rng.random(ROWS, dtype=np.float32),
        "emb": rng.random((ROWS, 3)).astype(np.float16),
        "user": np.array([42]),
        "ids": Ragged(np.arange(7, dtype=np.int64), np.array([0, 2, 2, 5, 6, 7])),
        "tags": Ragged(np.array([3, 1], dtype=np.int32), np.array([0, 2])),
        "flag": np.array([True, False, True, True, False]),
    }
    batch = Batch.from_arrays(layout, arrays, ROWS)
    plan = compile_plan(layout, layout.names)
    backing = np.zeros(_kernel.encoded_nbytes(plan, batch) + 16, np.uint8)
    buf = backing[misalign:misalign + _kernel.encoded_nbytes(plan, batch)]
    _kernel.encode_into(plan, batch, buf)
    return buf


def arrays_of(decoded):
    for name in decoded:
        col = decoded[name]
        parts = [("values", col.values), ("offsets", col.offsets)] if isinstance(col, Ragged) else [("", col)]
        for part, arr in parts:
            yield f"{name}{'.' + part if part else ''}", arr


FLAGS = ("C_CONTIGUOUS", "F_CONTIGUOUS", "WRITEABLE", "ALIGNED", "OWNDATA")


@pytest.mark.parametrize("misalign", [0, 4])
@pytest.mark.parametrize("writable", [True, False])
def test_views_match_the_reference(misalign, writable):
    buf = message(misalign)
    src = buf if writable else bytes(buf)
    k, r = _kernel.decode(src), _reference.decode(src)
    assert list(k) == list(r)
    assert (k.n_rows, k.nbytes) == (r.n_rows, r.nbytes)
    for name in r:
        assert k.spec(name) == r.spec(name)
        assert k.is_per_request(name) == r.is_per_request(name)
        assert k.is_ragged(name) == r.is_ragged(name)
    for (name, a), (_, b) in zip(arrays_of(k), arrays_of(r)):
        assert (a.dtype, a.shape, a.strides) == (b.dtype, b.shape, b.strides), name
        assert a.tobytes() == b.tobytes(), name
        assert {f: a.flags[f] for f in FLAGS} == {f: b.flags[f] for f in FLAGS}, name
        assert a.flags.writeable == writable


def test_views_alias_the_buffer_and_keep_it_alive():
    buf = message()
    decoded = _kernel.decode(buf)
    buf[decoded["score"].ctypes.data - buf.ctypes.data:][:4] = np.frombuffer(
        np.float32(9.5).tobytes(), np.uint8)
    assert decoded["score"][0] == 9.5  # a view, not a copy
    src = bytes(buf)
    cols = _kernel.decode(src)
    expected = cols["ids"].values.tolist()
    del src, cols
    gc.collect()
    decoded = _kernel.decode(bytes(buf))
    ids = decoded["ids"]
    del decoded
    gc.collect()
    assert ids.values.tolist() == expected


def test_decoding_leaks_no_references():
    src = bytes(message())
    dtype = np.dtype("float16")
    _kernel.decode(src)
    before = sys.getrefcount(src), sys.getrefcount(dtype)
    for _ in range(1000):
        _kernel.decode(src)
    gc.collect()
    assert (sys.getrefcount(src), sys.getrefcount(dtype)) == before


def test_empty_and_short_buffers_are_rejected_by_both():
    for impl in (_kernel, _reference):
        for buf in (b"", b"TRMB"):
            with pytest.raises(ValueError, match="truncated message"):
                impl.decode(buf)


def test_a_table_out_of_data_order_decodes_and_overlaps_are_named_alike():
    buf = message().copy()
    table = column_table(buf)
    table[[0, 5]] = table[[5, 0]]  # a valid message whose table is not in data order
    assert list(_kernel.decode(buf)) == list(_reference.decode(buf))
    assert _kernel.decode(buf)["flag"].tolist() == _reference.decode(buf)["flag"].tolist()
    table["data_offset"][0] = table["data_offset"][5]  # flag now lies inside score
    errors = []
    for impl in (_kernel, _reference):
        with pytest.raises(ValueError, match="overlap") as exc:
            impl.decode(buf)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


def encoded(specs, rows, seed=0):
    layout = Layout(specs)
    rng = np.random.default_rng(seed)
    arrays = {}
    for c in specs:
        n = 1 if c.per_request else rows
        if c.ragged:
            arrays[c.name] = Ragged(np.arange(n, dtype=c.dtype), np.arange(n + 1))
        else:
            arrays[c.name] = rng.integers(0, 9, (n,) + c.shape).astype(c.dtype)
    return bytes(Batch.from_arrays(layout, arrays, rows).buffer)  # a batch's buffer is a message


def test_layout_key_names_the_layout_not_the_values():
    base = [ColumnSpec("a", "float32"), ColumnSpec("v", "int8", (3,)),
            ColumnSpec("ids", "int64", ragged=True)]
    key = _kernel.decode(encoded(base, 4)).layout_key
    assert _reference.decode(encoded(base, 4)).layout_key == key
    assert _kernel.decode(encoded(base, 9, seed=1)).layout_key == key  # other rows, other values
    variants = {
        "dtype": [ColumnSpec("a", "float64")] + base[1:],
        "width": [base[0], ColumnSpec("v", "int8", (4,)), base[2]],
        "per_request": [ColumnSpec("a", "float32", per_request=True)] + base[1:],
        "name": [ColumnSpec("b", "float32")] + base[1:],
        "order": [base[1], base[0], base[2]],
        "extra column": base + [ColumnSpec("z", "bool")],
    }
    for what, specs in variants.items():
        other = encoded(specs, 4)
        assert _kernel.decode(other).layout_key != key, what
        assert _kernel.decode(other).layout_key == _reference.decode(other).layout_key, what
