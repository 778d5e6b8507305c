import numpy as np
import pytest

from _trim import _kernel, _reference


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
