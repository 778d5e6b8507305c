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

The compiled kernel is required for encoding and decoding, and is loaded on
first use (``from _trim import decode`` or a call): without a build, that
raises ImportError saying how to build it. ``TRIMMER_IMPL=reference`` selects
the pure-Python reference implementation instead; it is never used silently.
Everything else here, and the `_trim.transport` package, imports without it.
"""
from __future__ import annotations

import os
import sys

if sys.byteorder != "little":  # the wire format is little-endian and the kernel copies raw bytes
    raise ImportError("feature-trimmer supports little-endian hosts only")

import numpy as _np

from .batch import Batch, Ragged
from .decoded import Decoded
from .format import ALIGN, DTYPE_CODES, MAGIC, VERSION, ColumnSpec, Layout
from .plan import TrimPlan

IMPL_ENV = "TRIMMER_IMPL"
_KERNEL_API = ("IMPLEMENTATION", "decode", "encode", "encode_into", "encoded_nbytes")


def chosen_implementation(name: str | None = None) -> str:
    """``name``, else ``TRIMMER_IMPL``, else ``kernel``: which implementation
    of the compiled core's work runs (the gather kernel's, the record
    program's, the bulk load's); ``reference`` is the slow, obvious one."""
    chosen = name or os.environ.get(IMPL_ENV, "kernel")
    if chosen not in ("kernel", "reference"):
        raise ImportError(f"{IMPL_ENV}={chosen!r}: expected 'kernel' or 'reference'")
    return chosen


def _load_implementation():
    """The module that encodes and decodes: the kernel, or the reference by name."""
    chosen = chosen_implementation()
    if chosen == "reference":
        from . import _reference
        return chosen, _reference
    try:
        from . import _kernel
    except ImportError as exc:
        raise ImportError(
            "the _trim gather kernel is not built. Build it with `make install` "
            "(or `pip install -e .`, or `python setup.py build_ext --inplace`); "
            f"set {IMPL_ENV}=reference to run the slow pure-Python reference instead"
        ) from exc
    return chosen, _kernel


def __getattr__(name: str):
    # PEP 562: the kernel-backed names are made on first access, so importing
    # _trim (and _trim.transport below it) never requires the compiled build.
    if name not in _KERNEL_API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    chosen, impl = _load_implementation()

    def encoded_nbytes(plan: TrimPlan, batch: Batch) -> int:
        """Size in bytes of the message `encode_into` writes for ``batch``."""
        return impl.encoded_nbytes(plan, batch)

    def encode(plan: TrimPlan, batch: Batch) -> _np.ndarray:
        """The plan's columns of ``batch`` as a new uint8 array holding the message."""
        out = _np.empty(impl.encoded_nbytes(plan, batch), dtype=_np.uint8)
        impl.encode_into(plan, batch, out)
        return out

    # The implementation's own functions, unwrapped: they are on the hot path.
    #   encode_into(plan, batch, out) -> int: write the plan's columns of
    #     ``batch`` into the writable buffer ``out`` (bytearray, ndarray, a
    #     memoryview of mmap or shared memory), GIL released during the copy.
    #   decode(buf) -> Decoded: validate a message and return its columns as
    #     views on ``buf``; hostile input raises ValueError naming the problem,
    #     and nothing is read outside ``buf``.
    globals().update(IMPLEMENTATION=chosen, encoded_nbytes=encoded_nbytes, encode=encode,
                     encode_into=impl.encode_into, decode=impl.decode)
    return globals()[name]


def compile_plan(layout: Layout, names, reads=None, groups=()) -> TrimPlan:
    """Compile the features ``names`` against ``layout``; ValueError lists unknown names.
    ``reads`` (feature -> `FeatureRead`) narrows those features to what the model reads;
    ``groups`` (`_trim.groups.Group`) sends some of them as grouped columns."""
    return TrimPlan(layout, names, reads, groups)


__all__ = [
    "ALIGN", "DTYPE_CODES", "MAGIC", "VERSION", "IMPLEMENTATION",
    "Batch", "ColumnSpec", "Decoded", "Layout", "Ragged", "TrimPlan",
    "chosen_implementation", "compile_plan", "decode", "encode", "encode_into", "encoded_nbytes",
]
