import numpy as np
import pytest

from _trim import _kernel, _reference
from _trim.format import COLUMN_DTYPE, HEADER_DTYPE, HEADER_NBYTES


class Impl:
    """One implementation of the kernel functions, with decode on top."""

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.encoded_nbytes = module.encoded_nbytes
        self.encode_into = module.encode_into
        self.parse = module.parse
        self.decode = module.decode

    def encode(self, plan, batch):
        out = np.empty(self.encoded_nbytes(plan, batch), dtype=np.uint8)
        assert self.encode_into(plan, batch, out) == len(out)
        return out

    def __repr__(self):
        return self.name


@pytest.fixture(params=["kernel", "reference"])
def impl(request):
    return Impl(request.param, _kernel if request.param == "kernel" else _reference)


def header(buf):
    """A message's header, as a writable structured view when ``buf`` is writable."""
    return np.frombuffer(buf, dtype=np.uint8)[:HEADER_NBYTES].view(HEADER_DTYPE)


def table(buf):
    """A message's column table, likewise a view on ``buf``."""
    n = int(header(buf)["n_columns"][0])
    return np.frombuffer(buf, dtype=np.uint8)[HEADER_NBYTES:HEADER_NBYTES + 40 * n].view(COLUMN_DTYPE)
