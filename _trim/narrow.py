"""Narrowing float casts, bit for bit as torch does them (numpy reference).

What the kernel (`_trim/_kernel.pyx`) does in C, for the reference and the
tests: float32 to bfloat16 and float16 rounded to nearest, ties to even,
subnormals kept, overflow to infinity; float64 first to float32 (rounded
the same way) and from there, because that is what torch's CPU cast does
(``torch.tensor(x, dtype=torch.float64).to(torch.bfloat16)`` goes through
float32: the double rounding is torch's, and so ours). A NaN stays a NaN of
its sign, quieted, its payload cut to the narrow mantissa (the top bits),
as x86's conversions (F16C, AVX512-BF16) do. Torch's own NaN bits vary by
code path (scalar: a fixed NaN; vectorised: a fixed one for bfloat16, the
cut payload for float16; CUDA: its own), which is why the leaf widens a
narrowed column back before the model's own cast: from the widened NaN,
each path gives the bits it gives the original (docs/signatures.md,
"Sub-feature reads").
"""
from __future__ import annotations

import numpy as np


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of float32 or float64 ``values``."""
    with np.errstate(over="ignore", invalid="ignore"):
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    out = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
           >> np.uint32(16)).astype(np.uint16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def float16_bits(values: np.ndarray) -> np.ndarray:
    """The float16 bit patterns (uint16) of float32 or float64 ``values``."""
    with np.errstate(all="ignore"):
        f32 = np.ascontiguousarray(values, dtype=np.float32)
        out = f32.astype(np.float16).view(np.uint16).copy()
    bits = f32.view(np.uint32)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    out[nan] = (((bits[nan] >> np.uint32(16)) & np.uint32(0x8000)) | np.uint32(0x7E00)
                | ((bits[nan] >> np.uint32(13)) & np.uint32(0x3FF))).astype(np.uint16)
    return out


def narrow_bits(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` cast to ``dtype`` ("bfloat16" or "float16"), as uint16 bit patterns."""
    if dtype == "bfloat16":
        return bfloat16_bits(values)
    if dtype == "float16":
        return float16_bits(values)
    raise ValueError(f"no narrowing cast to {dtype!r}")


def widen(bits: np.ndarray, dtype: str, to) -> np.ndarray:
    """Narrow bit patterns back to ``to`` (exact: every narrow value is one of ``to``'s)."""
    if dtype == "bfloat16":
        wide = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        wide = bits.view(np.float16).astype(np.float32)
    return wide.astype(to)
