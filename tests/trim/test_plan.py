"""Trim plans: validation, merging of adjacent columns, misuse of encode."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _trim import Batch, ColumnSpec, Layout, Ragged, compile_plan

LAYOUT = Layout([ColumnSpec(f"c{i}", "float32") for i in range(6)]
                + [ColumnSpec("ids", "int32", ragged=True)])


def make_batch(rows=4, layout=LAYOUT):
    arrays = {c.name: np.full(rows, i, "f4") for i, c in enumerate(layout) if not c.ragged}
    arrays["ids"] = Ragged(np.arange(rows * 2, dtype="i4"), np.arange(0, rows * 2 + 1, 2))
    return Batch.from_arrays(layout, arrays, rows)


def test_unknown_names_are_all_listed():
    with pytest.raises(ValueError, match=r"unknown features: nope, c9"):
        compile_plan(LAYOUT, ["c1", "nope", "c2", "c9"])


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match=r"listed more than once: c1"):
        compile_plan(LAYOUT, ["c1", "c2", "c1"])


def test_adjacent_columns_merge_into_one_copy_whatever_the_request_order():
    plan = compile_plan(LAYOUT, ["c3", "c1", "c2", "ids", "c5"])
    assert plan.names == ("c1", "c2", "c3", "c5", "ids")
    assert plan.n_runs == 2  # c1..c3, then c5+ids


def test_one_plan_serves_batches_of_any_row_count_and_ragged_size(impl):
    plan = compile_plan(LAYOUT, ["c2", "ids"])
    for rows in (0, 1, 5, 300):
        decoded = impl.decode(impl.encode(plan, make_batch(rows)))
        assert decoded["c2"].tolist() == [2.0] * rows
        assert decoded["ids"].offsets[-1] == 2 * rows


def test_batch_of_another_layout_is_refused(impl):
    other = Layout([ColumnSpec("c0", "float32"), ColumnSpec("ids", "int32", ragged=True)])
    with pytest.raises(ValueError, match="does not match the plan's layout"):
        impl.encoded_nbytes(compile_plan(LAYOUT, ["c0"]), make_batch(3, other))


def test_equal_layouts_share_plans(impl):
    same = Layout(list(LAYOUT))
    message = impl.encode(compile_plan(LAYOUT, ["c4"]), make_batch(2, same))
    assert impl.decode(message)["c4"].tolist() == [4, 4]


def test_output_buffer_too_small_is_refused_before_writing(impl):
    plan, batch = compile_plan(LAYOUT, ["c0", "c1"]), make_batch()
    out = bytearray(impl.encoded_nbytes(plan, batch) - 1)
    with pytest.raises(ValueError, match=r"output buffer too small: message needs \d+ bytes, buffer has"):
        impl.encode_into(plan, batch, out)
    assert out == bytearray(len(out))


def test_read_only_output_is_refused(impl):
    plan, batch = compile_plan(LAYOUT, ["c0"]), make_batch()
    with pytest.raises(ValueError, match="read-only"):
        impl.encode_into(plan, batch, bytes(4096))


def test_empty_plan_is_a_valid_empty_message(impl):
    decoded = impl.decode(impl.encode(compile_plan(LAYOUT, []), make_batch(3)))
    assert len(decoded) == 0 and decoded.n_rows == 3


def test_batch_validates_what_it_is_given():
    with pytest.raises(ValueError, match="no data for columns: ids"):
        Batch.from_arrays(LAYOUT, {f"c{i}": np.zeros(2, "f4") for i in range(6)}, 2)
    arrays = {f"c{i}": np.zeros(2, "f4") for i in range(6)}
    arrays["ids"] = Ragged(np.arange(3, dtype="i4"), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="'ids': ragged offsets decrease"):
        Batch.from_arrays(LAYOUT, arrays, 2)
    arrays["ids"] = Ragged(np.arange(3, dtype="i4"), np.array([0, 1, 3]))
    arrays["c0"] = np.zeros(3, "f4")
    with pytest.raises(ValueError, match=r"'c0': expected shape \(2,\), got \(3,\)"):
        Batch.from_arrays(LAYOUT, arrays, 2)


def test_layout_refuses_bad_columns():
    with pytest.raises(ValueError, match="duplicate column names in layout: a"):
        Layout([ColumnSpec("a", "int8"), ColumnSpec("a", "int8")])
    with pytest.raises(ValueError, match="unsupported dtype 'complex64'"):
        ColumnSpec("z", "complex64")
    with pytest.raises(ValueError, match="ragged columns hold scalars"):
        ColumnSpec("r", "int64", (3,), ragged=True)


def test_import_without_the_extension_says_how_to_build_it(tmp_path):
    # Under another name, so that the installed (editable) _trim cannot answer the import.
    pkg = tmp_path / "_trim_unbuilt"
    shutil.copytree(Path(__file__).parents[2] / "_trim", pkg,
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("TRIMMER_IMPL", None)
    probe = "import _trim_unbuilt as t, sys; sys.stdout.write(t.IMPLEMENTATION)"
    failed = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert failed.returncode != 0
    assert "gather kernel is not built" in failed.stderr and "make install" in failed.stderr
    chosen = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                            env={**env, "TRIMMER_IMPL": "reference"}, capture_output=True, text=True)
    assert chosen.returncode == 0 and chosen.stdout == "reference"
