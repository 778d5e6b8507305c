"""Checking a decoded batch against a model's signature, and synthetic input.

The check reports every problem at once (one error reply names all missing
and mismatched features), because a root that trims with a stale config
usually gets several features wrong together.
"""
from __future__ import annotations

import numpy as np

from _trim import Batch, Decoded, Layout
from _trim.groups import Group
from _trim.transport.protocol import BAD_REQUEST, SIGNATURE_MISMATCH, ProtocolError
from signatures.repository.module_info import TensorSpec


def describe(dtype: str, shape: tuple, ragged: bool, per_request: bool) -> str:
    kind = "ragged" if ragged else "dense"
    dims = f"[{shape[0]}]" if shape else ""
    return f"{dtype}{dims} {kind}{' per-request' if per_request else ''}"


def check(decoded: Decoded, inputs: list[TensorSpec], header_rows: int,
          groups: tuple[Group, ...] = ()) -> None:
    """ProtocolError unless ``decoded`` carries every input as the signature declares it.

    Extra columns are ignored. A dense column may arrive per-request or per
    row: the model sees ``[rows, ...]`` either way (per-request ones are
    expanded). A ragged column's per-request flag must match, since it
    changes the offsets the model receives (2 entries instead of rows + 1).
    A grouped column that is one of the model's ``groups`` stands for its
    members (rule batch.grouped); other grouped columns are extra columns.
    """
    if decoded.n_rows != header_rows:
        raise ProtocolError(BAD_REQUEST, f"header says rows={header_rows} but the batch has "
                                         f"{decoded.n_rows} rows")
    missing, mismatched, problems = [], [], []
    covered: set[str] = set()
    if decoded.groups:
        mine = {g.name: g for g in groups}
        specs = {s.name: s for s in inputs}
        for name, group in decoded.groups.items():
            if name not in mine:
                continue
            problem = group_problem(decoded, name, group, mine[name], specs)
            if problem is None:
                covered.update(group.members)
            else:
                mismatched.append(name)
                problems.append(problem)
    for spec in inputs:
        if spec.name in covered:
            continue
        if spec.name not in decoded:
            missing.append(spec.name)
            continue
        dtype, shape, ragged, per_request = decoded.spec(spec.name)
        sliced = decoded.slice_of(spec.name)
        whole = sliced is None and dtype == spec.dtype and ragged == spec.ragged and (
            spec.per_request == per_request if ragged else shape == tuple(spec.shape))
        if whole:
            continue   # the whole feature: what a root that does not trim finer sends
        if spec.read is not None and not ragged and as_read(spec, dtype, shape, sliced):
            continue
        mismatched.append(spec.name)
        got = describe(dtype, shape, ragged, per_request) + describe_slice(sliced)
        want = describe(spec.dtype, tuple(spec.shape), spec.ragged, spec.per_request)
        if spec.read is not None:
            narrowed = spec.read.dtype or spec.dtype
            sliced_as = (describe_slice((spec.shape[0], spec.read.ranges))
                         if spec.read.ranges else "")
            want += f" (or as its read: {narrowed}{sliced_as})"
        problems.append(f"{spec.name}: expected {want}, got {got}"
                        + ("; the read it carries is not the signature's (sub-feature read "
                           "mismatch)" if sliced is not None or dtype != spec.dtype else ""))
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if problems:
            parts.append("; ".join(problems))
        raise ProtocolError(SIGNATURE_MISMATCH,
                            "batch does not match the model's signature: " + "; ".join(parts),
                            missing=missing, mismatched=mismatched)


def group_problem(decoded: Decoded, name: str, got: Group, want: Group,
                  specs: dict[str, TensorSpec]) -> str | None:
    """Why a grouped column is not the model's group ``want``; None when it is."""
    dtype, shape, _, _ = decoded.spec(name)
    members = [specs[m] for m in want.members]
    if got.kind != want.kind or got.per_request != want.per_request:
        return (f"group {name}: expected a {want.kind} group with {want.per_request} per-request "
                f"members, got a {got.kind} one with {got.per_request}")
    if want.kind == "jagged" and dtype != members[0].dtype:
        return f"group {name}: expected {members[0].dtype} values, got {dtype}"
    width = sum(s.shape[0] if s.shape else 1 for s in members)
    if want.kind == "dense" and (dtype != "float32" or shape != (width,)):
        return f"group {name}: expected float32[{width}], got {dtype}{list(shape)}"
    return None


def as_read(spec: TensorSpec, dtype: str, shape: tuple, sliced) -> bool:
    """Whether a dense column is exactly ``spec``'s read of its feature: the
    read's positions (sliced from the declared width) at the read's dtype."""
    read = spec.read
    assert read is not None
    if dtype != (read.dtype or spec.dtype):
        return False
    if read.ranges is None:
        return sliced is None and shape == tuple(spec.shape)
    return (sliced is not None and tuple(spec.shape) == (sliced[0],)
            and tuple(sliced[1]) == read.ranges and shape == (read.width(sliced[0]),))


def describe_slice(sliced) -> str:
    if sliced is None:
        return ""
    full, ranges = sliced
    return f" sliced {[list(r) for r in ranges]} of {full}"


class SignatureCheck:
    """`check` for one model, remembering the message layouts it accepted.

    A root sends every request for a model with the same trim plan, so all
    but the first message repeat a layout already checked; `Decoded.layout_key`
    identifies it exactly (names, order, dtypes, flags, widths), and a repeat
    costs one set lookup instead of a pass over every input. Rejected layouts
    are never remembered: each one gets the full, itemised error.
    """

    MAX_LAYOUTS = 64  # a few configs in flight during a rollout; more is a misbehaving root

    def __init__(self, inputs: list[TensorSpec], groups=()):
        self.inputs = list(inputs)
        self.groups = tuple(groups)
        self._accepted: set[bytes] = set()

    def __call__(self, decoded: Decoded, header_rows: int) -> None:
        if decoded.layout_key in self._accepted:
            if decoded.n_rows != header_rows:
                check(decoded, self.inputs, header_rows, self.groups)  # raises, naming the rows
            return
        check(decoded, self.inputs, header_rows, self.groups)
        if len(self._accepted) >= self.MAX_LAYOUTS:
            self._accepted.clear()
        self._accepted.add(decoded.layout_key)


def synthetic_message(inputs: list[TensorSpec], rows: int) -> np.ndarray:
    """An encoded batch that satisfies ``inputs``: zeros, one list element per
    ragged row. Used to warm a model up through the same path as real traffic."""
    layout = Layout(s.column_spec() for s in inputs)
    arrays: dict[str, object] = {}
    for spec in inputs:
        n = 1 if spec.per_request else rows
        if spec.ragged:
            arrays[spec.name] = (np.zeros(n, dtype=spec.dtype), np.arange(n + 1, dtype=np.int64))
        else:
            arrays[spec.name] = np.zeros((n,) + tuple(spec.shape), dtype=spec.dtype)
    # A batch's own buffer is a valid message.
    return Batch.from_arrays(layout, arrays, rows).buffer
