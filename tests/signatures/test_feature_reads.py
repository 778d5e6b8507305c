"""A signature's per-feature reads (_trim/reads.py): parsed strictly, hashed, round-tripped."""
import pytest

from _trim.errors import InvalidInput
from _trim.reads import FeatureRead
from signatures.repository.module_info import TensorSpec, signature_hash

EMB = {"name": "pin_emb", "dtype": "float32", "shape": [256], "kind": "dense"}


def spec(**read):
    return TensorSpec.from_dict({**EMB, "read": read}, "module_info.json: inputs")


def test_positions_become_sorted_disjoint_ranges():
    assert FeatureRead.from_positions([7, 0, 3, 3, 1, 2]).ranges == ((0, 4), (7, 8))
    assert FeatureRead.from_positions(range(64)).width(256) == 64


def test_read_round_trips_and_changes_the_signature_hash():
    whole = TensorSpec.from_dict(EMB, "x")
    prefix = spec(ranges=[[0, 64]], dtype="bfloat16")
    assert prefix.read == FeatureRead(((0, 64),), "bfloat16")
    assert TensorSpec.from_dict(prefix.to_dict(), "x") == prefix
    assert "read" not in whole.to_dict()
    assert signature_hash([whole], []) != signature_hash([prefix], [])
    assert signature_hash([prefix], []) != signature_hash([spec(ranges=[[0, 32]])], [])


@pytest.mark.parametrize("read, fault", [
    ({"ranges": [[0, 300]]}, "within [0, 256]"),
    ({"ranges": [[8, 16], [0, 4]]}, "sorted"),
    ({"ranges": [[0, 4], [4, 8]]}, "non-adjacent"),
    ({"ranges": [[0, 256]]}, "cover the whole feature"),
    ({"ranges": []}, "non-empty list"),
    ({"dtype": "int8"}, "not a narrowing cast"),
    ({}, "empty 'read'"),
    ({"rows": [1]}, "'ranges' and/or 'dtype'"),
])
def test_bad_reads_are_refused_naming_the_fault(read, fault):
    with pytest.raises(InvalidInput, match="pin_emb|read") as err:
        spec(**read)
    assert fault in str(err.value)


def test_ranges_need_a_fixed_width_vector_and_casts_a_wider_float():
    with pytest.raises(InvalidInput, match="not a fixed-width vector"):
        TensorSpec.from_dict({"name": "ids", "dtype": "int64", "kind": "ragged",
                              "read": {"ranges": [[0, 1]]}}, "x")
    with pytest.raises(InvalidInput, match="cannot narrow"):
        TensorSpec.from_dict({"name": "n", "dtype": "int64", "shape": [4],
                              "read": {"dtype": "float16"}}, "x")
