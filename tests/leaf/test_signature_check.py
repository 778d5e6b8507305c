"""The leaf's per-model signature check remembers layouts it accepted, and
never lets that memory accept what the full check would refuse."""
import numpy as np
import pytest

import _trim
from _trim.transport.protocol import BAD_REQUEST, SIGNATURE_MISMATCH, ProtocolError
from leafproc.input_check import SignatureCheck
from tests.support.models import encode_columns, random_columns, spec

from .conftest import CTR_INPUTS


def message(inputs, rows, seed=0):
    cols = random_columns(inputs, rows, np.random.default_rng(seed))
    return _trim.decode(bytes(encode_columns(inputs, cols, rows)))


def test_an_accepted_layout_is_remembered_across_values_and_row_counts():
    checker = SignatureCheck(CTR_INPUTS)
    checker(message(CTR_INPUTS, 5), 5)
    assert len(checker._accepted) == 1
    checker(message(CTR_INPUTS, 9, seed=1), 9)  # same layout, other rows and values
    assert len(checker._accepted) == 1


def test_a_remembered_layout_does_not_hide_a_wrong_row_count():
    checker = SignatureCheck(CTR_INPUTS)
    checker(message(CTR_INPUTS, 5), 5)
    with pytest.raises(ProtocolError) as exc:
        checker(message(CTR_INPUTS, 5), 6)
    assert exc.value.kind == BAD_REQUEST and "rows=6" in str(exc.value)


@pytest.mark.parametrize("sent", [
    [s for s in CTR_INPUTS if s.name != "pin_lang"],                          # a column missing
    [spec("pin_ctr", "float64")] + CTR_INPUTS[1:],                           # a dtype changed
    [s if s.name != "pin_emb" else spec("pin_emb", shape=(5,)) for s in CTR_INPUTS],  # a width
], ids=["missing", "dtype", "width"])
def test_mismatches_are_refused_every_time_after_a_good_layout(sent):
    checker = SignatureCheck(CTR_INPUTS)
    checker(message(CTR_INPUTS, 4), 4)
    for _ in range(2):  # refused layouts are not remembered
        with pytest.raises(ProtocolError) as exc:
            checker(message(sent, 4), 4)
        assert exc.value.kind == SIGNATURE_MISMATCH
    assert len(checker._accepted) == 1


def test_memory_is_bounded():
    checker = SignatureCheck([spec("x")])
    for i in range(SignatureCheck.MAX_LAYOUTS + 5):  # a root sending ever-new extra columns
        checker(message([spec("x"), spec(f"extra{i}")], 2), 2)
        assert len(checker._accepted) <= SignatureCheck.MAX_LAYOUTS
