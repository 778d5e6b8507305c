"""Grouped columns (docs/protocol.md, "Grouped columns"): the kernel builds
them byte for byte as the pure-Python reference does, their layout is the
one TorchRec takes (a jagged group's offsets and values are a
KeyedJaggedTensor's, key-major; a dense group is the [rows, D] dense tensor),
and a receiver rejects every malformed group naming the problem (rule
batch.grouped-valid)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _trim import Batch, ColumnSpec, Layout, Ragged, _kernel, _reference, compile_plan
from _trim.groups import Group, group_name

from .conftest import table


def ragged(rng, rows, dtype="int64", most=4):
    lengths = rng.integers(0, most + 1, rows)
    return Ragged(rng.integers(0, 1000, int(lengths.sum())).astype(dtype),
                  np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def world(rows=5, seed=0, dtype="int64"):
    """A layout with ids per row and per request, dense scalars and vectors
    (one per request), and a column no group takes, filled at random."""
    rng = np.random.default_rng(seed)
    layout = Layout([ColumnSpec("a", dtype, ragged=True), ColumnSpec("x", "float32"),
                     ColumnSpec("u", dtype, ragged=True, per_request=True),
                     ColumnSpec("b", dtype, ragged=True), ColumnSpec("other", "int32"),
                     ColumnSpec("v", "float32", (3,)),
                     ColumnSpec("uv", "float32", (2,), per_request=True)])
    arrays = {"a": ragged(rng, rows, dtype), "b": ragged(rng, rows, dtype),
              "u": ragged(rng, 1, dtype, 6), "x": rng.standard_normal(rows).astype("f4"),
              "other": np.arange(rows, dtype="i4"),
              "v": rng.standard_normal((rows, 3)).astype("f4"),
              "uv": rng.standard_normal((1, 2)).astype("f4")}
    return layout, arrays, Batch.from_arrays(layout, arrays, rows)


IDS = Group("jagged", ("b", "a", "u"), 1)
DENSE = Group("dense", ("v", "x", "uv"))


def expected_kjt(arrays, group, rows):
    """TorchRec's layout: per (key, row) list, key-major, per-request keys once."""
    values, lengths = [], []
    for m in group.members:
        col = arrays[m]
        values.append(col.values)
        lengths.append(np.diff(col.offsets))
    lengths = np.concatenate(lengths)
    return np.concatenate(values), np.concatenate([[0], np.cumsum(lengths)])


def expected_dense(arrays, group, rows):
    cols = [np.broadcast_to(arrays[m].reshape(arrays[m].shape[0], -1),
                            (rows, arrays[m].reshape(arrays[m].shape[0], -1).shape[1]))
            for m in group.members]
    return np.concatenate(cols, axis=1)


def encode(impl, plan, batch):
    out = np.empty(impl.encoded_nbytes(plan, batch), np.uint8)
    assert impl.encode_into(plan, batch, out) == len(out)
    return out


def test_groups_carry_torchrecs_layout_and_the_members_go_only_there(impl):
    layout, arrays, batch = world()
    plan = compile_plan(layout, ["a", "b", "u", "x", "v", "uv", "other"], groups=[IDS, DENSE])
    msg = encode(impl, plan, batch)
    d = impl.decode(msg)
    assert set(d) == {"other", IDS.name, DENSE.name}
    assert d.group_of(IDS.name) == IDS and d.group_of(DENSE.name) == DENSE
    assert d.group_of("other") is None
    values, offsets = expected_kjt(arrays, IDS, 5)
    np.testing.assert_array_equal(d[IDS.name].values, values)
    np.testing.assert_array_equal(d[IDS.name].offsets, offsets)
    assert len(d[IDS.name].offsets) == 2 * 5 + 1 + 1   # two keys x rows lists, the user's once
    np.testing.assert_array_equal(d[DENSE.name], expected_dense(arrays, DENSE, 5))
    assert d[DENSE.name].shape == (5, 6) and d[DENSE.name].flags.c_contiguous
    np.testing.assert_array_equal(d["other"], arrays["other"])
    assert d.spec(IDS.name) == ("int64", (), True, False)
    assert d.spec(DENSE.name) == ("float32", (6,), False, False)


def test_the_size_is_the_documented_formula(impl):
    layout, arrays, batch = world()
    plan = compile_plan(layout, ["a", "b", "u", "x", "v", "uv"], groups=[IDS, DENSE])
    lists = 2 * 5 + 1
    n_values = sum(len(arrays[m].values) for m in IDS.members)
    names = len(IDS.name) + len(DENSE.name)
    align8 = lambda n: -(-n // 8) * 8  # noqa: E731
    want = (align8(32 + 40 * 2 + names) + align8(8 * (lists + 1) + 8 * n_values)
            + align8(5 * 6 * 4))
    assert impl.encoded_nbytes(plan, batch) == want


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=st.integers(0, 40), seed=st.integers(0, 2**16), dtype=st.sampled_from(["int64", "int32"]),
       order=st.permutations(["a", "b"]), per_request=st.booleans(),
       dense=st.permutations(["x", "v", "uv"]))
def test_the_kernel_writes_the_references_bytes(rows, seed, dtype, order, per_request, dense):
    layout, arrays, batch = world(rows, seed, dtype)
    ids = Group("jagged", tuple(order) + (("u",) if per_request else ()), int(per_request))
    groups = [ids, Group("dense", tuple(dense))]
    plan = compile_plan(layout, ["a", "b", "u", "x", "v", "uv", "other"], groups=groups)
    ours, theirs = encode(_kernel, plan, batch), encode(_reference, plan, batch)
    assert ours.tobytes() == theirs.tobytes()
    d = _kernel.decode(ours)
    values, offsets = expected_kjt(arrays, ids, rows)
    np.testing.assert_array_equal(d[ids.name].values, values)
    np.testing.assert_array_equal(d[ids.name].offsets, offsets)
    if rows:
        np.testing.assert_array_equal(d[groups[1].name], expected_dense(arrays, groups[1], rows))
    r = _reference.decode(theirs)
    assert r.layout_key == d.layout_key and r.groups == d.groups


@pytest.mark.parametrize("group, error", [
    (Group("jagged", ("a", "nope")), "'nope' is not a feature the plan sends"),
    (Group("jagged", ("a", "x")), "members are ragged, of one dtype"),
    (Group("jagged", ("u", "a"), 1), "per-request members must be its last 1"),
    (Group("jagged", ("a", "u")), "per-request members must be its last 0"),
    (Group("dense", ("x", "other")), "dense float32 columns"),
])
def test_a_group_that_does_not_fit_the_layout_is_refused(group, error):
    layout, _, _ = world()
    with pytest.raises(ValueError, match=error):
        compile_plan(layout, ["a", "b", "u", "x", "other"], groups=[group])
    with pytest.raises(ValueError, match="is in another group"):
        compile_plan(layout, ["a", "b"], groups=[Group("jagged", ("a",)), Group("jagged", ("a", "b"))])


def grouped_message(impl):
    layout, _, batch = world()
    plan = compile_plan(layout, ["a", "b", "u", "x", "v", "uv"], groups=[IDS, DENSE])
    return bytearray(encode(impl, plan, batch).tobytes())


def ids_entry(buf):
    return table(buf)[0:1]


def dense_entry(buf):
    return table(buf)[1:2]


def set_group_offset(buf, index, value):
    start = int(ids_entry(buf)["data_offset"][0])
    np.frombuffer(buf, np.uint8)[start:start + 8 * 12].view("<i8")[index] = value


def rename(buf, name: str):
    """The jagged group's name bytes replaced in place by ``name`` (same length)."""
    old = IDS.name.encode()
    new = name.encode()
    assert len(new) == len(old)
    at = bytes(buf).index(old)
    buf[at:at + len(old)] = new


MALFORMED = {
    "per-request": (lambda b: ids_entry(b).__setitem__("flags", 1 | 2 | 16),
                    "neither per-request nor sliced"),
    "sliced": (lambda b: dense_entry(b).__setitem__("flags", 4 | 8 | 16), "neither per-request nor sliced"),
    "neither jagged nor dense": (lambda b: dense_entry(b).__setitem__("flags", 16),
                                 "ragged \\(jagged\\) or a vector"),
    "name not JSON": (lambda b: rename(b, "x" * len(IDS.name)), "its name must be a JSON array"),
    "member twice": (lambda b: rename(b, '["b","b","u"]'), "lists a member twice"),
    "empty member": (lambda b: rename(b, '["b","" ,"u"]'), "its name must be a JSON array"),
    "width not the members": (lambda b: ids_entry(b).__setitem__("width", 2),
                              "jagged group of 3 members says width 2"),
    "per-request above width": (lambda b: ids_entry(b).__setitem__("reserved", 4), "per-request 4"),
    "dense narrower than members": (lambda b: dense_entry(b).__setitem__("width", 2),
                                    "dense group of 3 members"),
    "dense reserved": (lambda b: dense_entry(b).__setitem__("reserved", 1), "reserved 1"),
    "offsets not from 0": (lambda b: set_group_offset(b, 0, 1), "offsets must start at 0"),
    "offsets decrease": (lambda b: set_group_offset(b, 3, -1), "never decrease"),
    "offsets end short": (lambda b: set_group_offset(b, 11, 0), "never decrease|last offset"),
    "values past the bytes": (lambda b: ids_entry(b).__setitem__("n_values", 2**61), "cannot hold"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_group_is_rejected_naming_it(impl, case):
    buf = grouped_message(impl)
    impl.decode(bytes(buf))   # valid before the change
    mutate, error = MALFORMED[case]
    mutate(buf)
    with pytest.raises(ValueError, match=error):
        impl.decode(bytes(buf))


def test_huge_counts_do_not_overflow(impl):
    buf = grouped_message(impl)
    from .conftest import header
    header(buf)["n_rows"] = 2**32 - 1
    ids_entry(buf)["width"] = 3
    with pytest.raises(ValueError, match="cannot hold"):
        impl.decode(bytes(buf))


def test_group_names_list_any_feature_name():
    odd = ("a,b", 'quo"te', "ünï", "[x]")
    assert Group("dense", odd).name == group_name(odd)
    from _trim.groups import parse_group_name
    assert parse_group_name(group_name(odd)) == odd


@pytest.mark.parametrize("rows", [0, 1, 5, 33])
def test_the_roots_size_bound_covers_a_grouped_message(rows):
    """rootproc/config_plans.py's bound (reserved before a request is built):
    the grouped message, its ragged values aside, fits it."""
    from rootproc.config_plans import grouped_linear
    layout, arrays, batch = world(rows, rows)
    plan = compile_plan(layout, ["a", "b", "u", "x", "v", "uv", "other"], groups=[IDS, DENSE])
    values = sum(len(arrays[m].values) * 8 for m in IDS.members)
    assert _kernel.encoded_nbytes(plan, batch) <= grouped_linear(layout, plan).at(rows) + values
