"""What a model reads of one feature, when that is less than all of it.

A signature lists whole features; a ``FeatureRead`` narrows one of them to
the part its model's graph provably reads (signatures/derive): a constant
set of positions of a vector feature (``x[:, :64]``, ``x[:, [0, 3, 7]]``),
and the narrower float type of its first use when that use is a cast and
nothing reads the wide value (``x.to(torch.bfloat16)``). No read at all
means the whole feature at its schema dtype; derivation never guesses.

Positions are kept as sorted, disjoint, non-adjacent half-open ranges over
the feature's one per-row dimension, whatever order or repeats the model's
own index used: the model indexes the positions itself, so the root need
only deliver each read position once.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInput

# Casts a read may declare, and the source dtypes each may narrow.
NARROWER_FLOATS = {
    "bfloat16": ("float32", "float64"),
    "float16": ("float32", "float64"),
}


@dataclass(frozen=True)
class FeatureRead:
    """The part of a feature a model reads.

    ``ranges``: the read positions of a vector feature as sorted, disjoint,
    non-adjacent ``(start, stop)`` pairs, or None for every position.
    ``dtype``: the float type the model narrows the feature to before any
    other use, or None for the feature's own dtype.
    """

    ranges: tuple[tuple[int, int], ...] | None = None
    dtype: str | None = None

    @property
    def whole(self) -> bool:
        return self.ranges is None and self.dtype is None

    def width(self, full: int) -> int:
        """Positions read of a vector of ``full`` positions."""
        if self.ranges is None:
            return full
        return sum(stop - start for start, stop in self.ranges)

    def to_dict(self) -> dict:
        d: dict = {}
        if self.ranges is not None:
            d["ranges"] = [[start, stop] for start, stop in self.ranges]
        if self.dtype is not None:
            d["dtype"] = self.dtype
        return d

    @classmethod
    def from_positions(cls, positions, dtype: str | None = None) -> FeatureRead:
        """A read of these positions (any order, repeats allowed)."""
        ranges: list[list[int]] = []
        for p in sorted(set(int(p) for p in positions)):
            if ranges and ranges[-1][1] == p:
                ranges[-1][1] = p + 1
            else:
                ranges.append([p, p + 1])
        return cls(tuple((a, b) for a, b in ranges), dtype)

    @classmethod
    def from_dict(cls, d, where: str) -> FeatureRead:
        if not isinstance(d, dict) or set(d) - {"ranges", "dtype"}:
            raise InvalidInput(f"{where}: 'read' must be an object with 'ranges' and/or 'dtype', "
                               f"got {d!r}")
        ranges = None
        if "ranges" in d:
            raw = d["ranges"]
            if not isinstance(raw, list) or not raw or not all(
                    isinstance(r, list) and len(r) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in r) for r in raw):
                raise InvalidInput(f"{where}: 'read.ranges' must be a non-empty list of "
                                   f"[start, stop] integer pairs, got {raw!r}")
            ranges = tuple((r[0], r[1]) for r in raw)
        dtype = d.get("dtype")
        if dtype is not None and dtype not in NARROWER_FLOATS:
            raise InvalidInput(f"{where}: 'read.dtype' {dtype!r} is not a narrowing cast; "
                               f"supported: {', '.join(NARROWER_FLOATS)}")
        return cls(ranges, dtype)

    def check(self, feature: str, dtype: str, shape: tuple, ragged: bool, where: str) -> None:
        """InvalidInput naming the fault unless this read fits the feature."""
        if self.ranges is not None:
            if ragged or len(shape) != 1:
                raise InvalidInput(f"{where}: {feature!r} declares read ranges but is not a "
                                   f"fixed-width vector (shape {list(shape)})")
            width, prev_stop = shape[0], -1
            for start, stop in self.ranges:
                if not (0 <= start < stop <= width) or start <= prev_stop:
                    raise InvalidInput(
                        f"{where}: {feature!r} read ranges {[list(r) for r in self.ranges]} must "
                        f"be sorted, disjoint, non-adjacent and within [0, {width}]")
                prev_stop = stop
            if self.ranges == ((0, width),):
                raise InvalidInput(f"{where}: {feature!r} read ranges cover the whole feature; "
                                   "omit them")
        if self.dtype is not None and dtype not in NARROWER_FLOATS[self.dtype]:
            raise InvalidInput(f"{where}: {feature!r} is {dtype}, which a {self.dtype} read "
                               f"cannot narrow (only {', '.join(NARROWER_FLOATS[self.dtype])})")
        if self.whole:
            raise InvalidInput(f"{where}: {feature!r} has an empty 'read'; omit it")
