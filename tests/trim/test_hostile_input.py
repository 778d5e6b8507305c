"""Hostile or truncated messages are rejected with a ValueError that names
the problem, and nothing outside the buffer is read."""
import numpy as np
import pytest

from _trim import Batch, ColumnSpec, Layout, Ragged, compile_plan

from .conftest import header, table


def sample_message(impl):
    layout = Layout([ColumnSpec("dense", "float32", (2,)),
                     ColumnSpec("ids", "int64", ragged=True),
                     ColumnSpec("user", "float32", per_request=True)])
    batch = Batch.from_arrays(layout, {
        "dense": np.arange(6, dtype="f4").reshape(3, 2),
        "ids": Ragged(np.array([1, 2, 3]), np.array([0, 1, 1, 3])),
        "user": np.array([7.0], "f4")}, 3)
    return bytearray(impl.encode(compile_plan(layout, ["dense", "ids", "user"]), batch))


def col(buf, name):
    names = {"dense": 0, "ids": 1, "user": 2}
    return table(buf)[names[name]:names[name] + 1]


def set_offset(buf, column, row, value):
    start = int(col(buf, column)["data_offset"][0])
    np.frombuffer(buf, dtype=np.uint8)[start:start + 8 * 4].view("<i8")[row] = value


CASES = {
    "empty buffer": (lambda b: b.clear(), "truncated message: 0 bytes"),
    "truncated": (lambda b: b.__delitem__(slice(len(b) - 5, None)), "truncated message: header says"),
    "bad magic": (lambda b: b.__setitem__(slice(0, 4), b"JUNK"), "not a trimmer message"),
    "future version": (lambda b: header(b).__setitem__("version", 9), "unsupported message version 9"),
    "absurd column count": (lambda b: header(b).__setitem__("n_columns", 2**32 - 1),
                            "column count 4294967295 does not fit"),
    "absurd names size": (lambda b: header(b).__setitem__("names_nbytes", 2**31), "names .* run past"),
    "name out of range": (lambda b: col(b, "ids").__setitem__("name_offset", 2**31), "column 1: name runs past"),
    "duplicate name": (lambda b: col(b, "user").__setitem__("name_offset", 0) or
                       col(b, "user").__setitem__("name_nbytes", 5), "duplicate column 'dense'"),
    "unknown dtype": (lambda b: col(b, "dense").__setitem__("dtype", 42), "'dense': unknown dtype code 42"),
    # 9 is bfloat16 on the wire (narrowed reads); 10..12 only a store's raw fields have.
    "raw-only dtype": (lambda b: col(b, "dense").__setitem__("dtype", 10), "'dense': unknown dtype code 10"),
    "dtype code 0": (lambda b: col(b, "dense").__setitem__("dtype", 0), "'dense': unknown dtype code 0"),
    "unknown flag": (lambda b: col(b, "dense").__setitem__("flags", 0x84), "'dense': unknown flags"),
    "ragged vector": (lambda b: col(b, "ids").__setitem__("flags", 5), "'ids': a ragged column cannot be a vector"),
    "zero width": (lambda b: col(b, "dense").__setitem__("width", 0), "'dense': bad width 0"),
    "offset past end": (lambda b: col(b, "dense").__setitem__("data_offset", 2**63), "'dense': data offset|'dense': data .* runs past"),
    "size overflow": (lambda b: col(b, "dense").__setitem__("data_nbytes", 2**64 - 8), "'dense': data .* runs past"),
    "misaligned": (lambda b: col(b, "dense").__setitem__("data_offset", int(col(b, "dense")["data_offset"][0]) + 4),
                   "'dense': data offset .* misplaced"),
    "inside the table": (lambda b: col(b, "dense").__setitem__("data_offset", 32), "'dense': data offset 32 is misplaced"),
    "wrong value count": (lambda b: col(b, "dense").__setitem__("n_values", 5), "'dense': 5 values, expected 3 rows x 2"),
    "huge value count": (lambda b: col(b, "ids").__setitem__("n_values", 2**62), "'ids': .* cannot hold"),
    "wrong byte count": (lambda b: col(b, "user").__setitem__("data_nbytes", 0), "'user': 0 bytes cannot hold 1 values"),
    "bytes past values": (lambda b: col(b, "user").__setitem__("data_nbytes", 8), "'user': data is 8 bytes, expected 4"),
    "overlap": (lambda b: col(b, "user").__setitem__("data_offset", int(col(b, "dense")["data_offset"][0])),
                "columns '(dense|user)' and '(dense|user)' overlap"),
    "offsets decrease": (lambda b: set_offset(b, "ids", 2, 0), "'ids': ragged offsets must start at 0 and never decrease"),
    "offsets negative start": (lambda b: set_offset(b, "ids", 0, -1), "'ids': ragged offsets must start at 0"),
    "offsets past values": (lambda b: set_offset(b, "ids", 3, 2**40), "'ids': last offset"),
    "more rows than bytes": (lambda b: header(b).__setitem__("n_rows", 2**32 - 1), "'dense'|'ids'"),
    # Reserved fields are 0, and a receiver rejects anything else: a later
    # version may give them a meaning an old receiver must not ignore.
    "header flags set": (lambda b: header(b).__setitem__("flags", 1), "header flags 0x1 are reserved"),
    "header flags high bit": (lambda b: header(b).__setitem__("flags", 2**31),
                              "header flags 0x80000000 are reserved"),
    "column reserved set": (lambda b: col(b, "ids").__setitem__("reserved", 7),
                            "'ids': reserved field is 7"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_with_a_message_naming_the_problem(impl, case):
    mutate, message = CASES[case]
    buf = sample_message(impl)
    mutate(buf)
    with pytest.raises(ValueError, match=message):
        impl.decode(bytes(buf))


def test_sample_message_itself_is_valid(impl):
    decoded = impl.decode(bytes(sample_message(impl)))
    assert decoded["ids"].offsets.tolist() == [0, 1, 1, 3]


def test_random_corruption_never_crashes(impl):
    rng = np.random.default_rng(1)
    good = bytes(sample_message(impl))
    for _ in range(2000):
        buf = bytearray(good)
        for pos in rng.integers(0, len(buf), size=rng.integers(1, 6)):
            buf[pos] = rng.integers(0, 256)
        if rng.random() < 0.2:
            del buf[rng.integers(0, len(buf)):]
        try:
            decoded = impl.decode(bytes(buf))
        except ValueError:
            continue
        for value in decoded.values():  # whatever is accepted must be readable in bounds
            np.asarray(value[0] if isinstance(value, Ragged) else value).sum()


def test_trailing_bytes_past_total_are_ignored(impl):
    buf = sample_message(impl) + b"\xff" * 100  # e.g. a shared-memory slot longer than the message
    assert impl.decode(bytes(buf))["user"].tolist() == [7.0]
