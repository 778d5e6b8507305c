"""Records of raw feature fields: their layout, the program that turns them
into a batch, and the writer that makes them.

    layout.py              the binary layout of one source's records (`RecordLayout`)
    _program.pyx           the record program, compiled: records to a batch in one pass
    program_reference.py   its numpy definition
    _writer.pyx            the record writer, compiled: synthetic or given values
                           written into records in place
    writer_reference.py    its numpy definition

Each compiled part has a numpy reference that gives the same bytes; which
one runs is chosen here, and only here, by name like the gather kernel's
(`_trim.chosen_implementation`: ``impl``, else ``TRIMMER_IMPL``, else the
compiled one).
"""
from __future__ import annotations

from types import ModuleType

from _trim import chosen_implementation


def record_writer(impl: str | None = None) -> ModuleType:
    """The module that writes records, compiled (`_trim.records._writer`) or
    the reference (`_trim.records.writer_reference`): both have
    ``RecordWriter(size, runs, lists, columns)`` and ``pack(fixed, size, ragged)``."""
    if chosen_implementation(impl) == "reference":
        from _trim.records import writer_reference
        return writer_reference
    import _trim.records._writer as _writer
    return _writer


def record_program(pre, sources: list, steps: list[dict], impl: str | None = None):
    """The program that builds a preprocessor's batches from records, with
    ``build(user_records, candidate_records) -> Batch``: the compiled
    `RecordProgram` of ``sources`` and ``steps`` (rootproc/preprocess/steps.py
    compiles them from ``pre``), or the reference `NumpyPreprocessing`, which
    reads ``pre`` itself (its batch layout, record layouts, features and
    absent fields)."""
    if chosen_implementation(impl) == "reference":
        from _trim.records.program_reference import NumpyPreprocessing
        return NumpyPreprocessing(pre)
    from _trim.records._program import RecordProgram
    return RecordProgram(pre.layout, sources, steps)


__all__ = ["record_program", "record_writer"]
