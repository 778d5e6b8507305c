"""Feature Trimmer core: columnar batches, trim plans, the gather kernel.

Typical use, on the root::

    layout = Layout([ColumnSpec("user_emb", "float32", (256,), per_request=True), ...])
    batch = Batch(layout, n_rows=256)            # preprocessing fills batch.column(name)
    plan = compile_plan(layout, signature_names) # once per config
    out = bytearray(encoded_nbytes(plan, batch))
    n = encode_into(plan, batch, out)            # GIL released during the copy

and on the leaf::

    cols = decode(frame.buffer)                  # views, no copies
    cols["user_emb"], cols.broadcast("user_emb")

The compiled kernel is required. ``TRIM_IMPL=reference`` selects the pure-Python
reference implementation instead; it is never used silently.
"""
from __future__ import annotations

import os
import sys

if sys.byteorder != "little":  # the wire format is little-endian and the kernel copies raw bytes
    raise ImportError("feature-trimmer supports little-endian hosts only")

from . import _reference
from .batch import Batch, Ragged
from .decode import Decoded
from .format import ALIGN, DTYPE_CODES, MAGIC, VERSION, ColumnSpec, Layout
from .plan import TrimPlan

IMPLEMENTATION = os.environ.get("TRIM_IMPL", "kernel")
if IMPLEMENTATION == "reference":
    _impl = _reference
elif IMPLEMENTATION == "kernel":
    try:
        from . import _kernel as _impl
    except ImportError as exc:
        raise ImportError(
            "the _trim gather kernel is not built. Build it with `make install` "
            "(or `pip install -e .`, or `python setup.py build_ext --inplace`); "
            "set TRIM_IMPL=reference to run the slow pure-Python reference instead"
        ) from exc
else:
    raise ImportError(f"TRIM_IMPL={IMPLEMENTATION!r}: expected 'kernel' or 'reference'")

import numpy as _np


def compile_plan(layout: Layout, names) -> TrimPlan:
    """Compile the features ``names`` against ``layout``; ValueError lists unknown names."""
    return TrimPlan(layout, names)


def encoded_nbytes(plan: TrimPlan, batch: Batch) -> int:
    """Size in bytes of the message `encode_into` writes for ``batch``."""
    return _impl.encoded_nbytes(plan, batch)


def encode_into(plan: TrimPlan, batch: Batch, out) -> int:
    """Write the plan's columns of ``batch`` into the writable buffer ``out``
    (bytearray, ndarray, memoryview of mmap or shared memory); returns bytes written."""
    return _impl.encode_into(plan, batch, out)


def encode(plan: TrimPlan, batch: Batch) -> _np.ndarray:
    """The plan's columns of ``batch`` as a new uint8 array holding the message."""
    out = _np.empty(_impl.encoded_nbytes(plan, batch), dtype=_np.uint8)
    _impl.encode_into(plan, batch, out)
    return out


def decode(buf) -> Decoded:
    """Validate a message and return its columns as views on ``buf``.

    Hostile or truncated input raises ValueError naming the problem; nothing is
    read outside ``buf``.
    """
    return _impl.decode(buf)


__all__ = [
    "ALIGN", "DTYPE_CODES", "MAGIC", "VERSION", "IMPLEMENTATION",
    "Batch", "ColumnSpec", "Decoded", "Layout", "Ragged", "TrimPlan",
    "compile_plan", "decode", "encode", "encode_into", "encoded_nbytes",
]
