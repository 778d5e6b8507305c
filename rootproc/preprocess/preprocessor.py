"""Build a request's batch from raw records: compute only what is used.

A `Preprocessor` is compiled once per (schema, feature set, store layouts):
it resolves every feature to a step (read which raw field, apply which
transform in which dtype, write which column). Two implementations build
the batch from those steps, selected by name like the gather kernel's
(``TRIMMER_IMPL``, read when the preprocessor is made, by
`_trim.records.record_program`):

- ``kernel`` (the default): `_trim.records._program.RecordProgram`, one compiled
  pass over the records that writes every column straight into the batch
  with the GIL released, no Python per feature or per record
  (rootproc/preprocess/steps.py compiles the steps);
- ``reference``: numpy calls over the decoded records
  (_trim/records/program_reference.py), the definition the kernel is checked
  against: both give the same batch, bit for bit.

Transforms (the schema's ``transform.op``):

- ``identity``: the raw value, cast to the feature's dtype.
- ``log1p``: ``log(1 + x)`` (NaN below -1, as numpy).
- ``clip``: ``lo`` below ``lo``, ``hi`` above ``hi``, else ``x`` unchanged (NaN, and a
  -0.0 in range, included): numpy's clip with scalar bounds.
- ``standardize``: ``(x - mean) / std``, in the feature's dtype.
- ``hash``: an id (scalar, or each element of a ragged list) to a bucket in
  ``[0, buckets)``: murmur3's 64-bit finaliser of the id's two's-complement
  bits, modulo ``buckets``. Deterministic across processes and hosts.
- ``dot`` (cross): per candidate, the dot product of two float vectors (a
  per-request user vector is reused for every candidate): the products in
  float64, summed in element order, rounded once to the feature's dtype (a
  NaN result is the one quiet NaN), so that it is the same on every CPU (no
  BLAS, no fused multiply-add).

Each transform computes in the dtype numpy gives its operands (the raw
field's dtype and a Python-number parameter: float32 stays float32), and
the result is cast to the feature's dtype.

A record without a raw field, or a store written before a field existed,
gives the feature's ``default`` (0 / an empty list when none is set).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from _trim import Batch
from _trim.records import record_program
from _trim.records.layout import RawField, RecordLayout, raw_dtype
from _trim.records.program_reference import hash_ids
from rootproc.preprocess import steps as preprocess_plan


class Preprocessor:
    """Computes the features ``names`` (plus the cross inputs they need).

    ``record_layouts`` are the feature store's layouts (source ->
    `RecordLayout`); a raw field they lack is filled from the feature's
    default. A field whose shape differs from the schema's is an error here,
    at startup, not per request. ``impl`` overrides ``TRIMMER_IMPL``.
    """

    def __init__(self, schema, names: Iterable[str] | None,
                 record_layouts: Mapping[str, RecordLayout], impl: str | None = None):
        self.schema = schema
        self.names = schema.names if names is None else schema.closure(names)
        self.layout = schema.layout(self.names)
        self.features = [schema[n] for n in self.names]
        self.record_layouts = record_layouts
        self.raw_fields: dict[str, list[str]] = {"user": [], "candidate": []}
        self.absent: dict[str, RawField] = {}
        problems = []
        for f in self.features:
            if f.source == "cross":
                continue
            raw = f.raw_name
            want = RawField(raw, raw_dtype(f), f.shape[0] if f.shape else 1, bool(f.shape),
                            f.ragged, f.default)
            have = record_layouts[f.source].fields.get(raw)
            if have is None:
                self.absent[f.name] = want
            elif (have.width, have.vector, have.ragged) != (want.width, want.vector, want.ragged):
                problems.append(f"feature {f.name!r} reads {f.source}.{raw} as "
                                f"{want.shape}{' ragged' if want.ragged else ''}, the store holds "
                                f"{have.shape}{' ragged' if have.ragged else ''}")
            elif raw not in self.raw_fields[f.source]:
                self.raw_fields[f.source].append(raw)
        if problems:
            raise ValueError("feature store does not match the schema:\n  - " + "\n  - ".join(problems))
        # Compiled for either implementation: a parameter that does not fit the
        # dtype its transform computes in is refused here, at startup, by both.
        steps = preprocess_plan.steps(self)
        self.program = record_program(self, preprocess_plan.sources(record_layouts), steps, impl)
        self._build = self.program.build

    @property
    def absent_features(self) -> list[str]:
        """Features the store has no raw field for (always their default)."""
        return list(self.absent)

    def build(self, user_records, candidate_records) -> Batch:
        """The batch for one user record and a list of candidate records
        (bytes-like objects, valid for the duration of the call)."""
        return self._build(user_records, candidate_records)


__all__ = ["Preprocessor", "hash_ids"]
