"""Errors as the root writes them to a client: a TrimmerError keeps a wire
kind of its own, anything else is `internal` with its traceback logged."""
from __future__ import annotations

import logging

from _trim.errors import ConfigError, NotFound
from _trim.transport.protocol import TOO_LARGE, ProtocolError
from rootproc.reply import wire_error


def test_trimmer_errors_map_to_their_kinds(caplog):
    kept = ProtocolError(TOO_LARGE, "big", limit=3)
    assert wire_error(kept, "request 'r'") is kept
    assert wire_error(NotFound("no such version"), "request 'r'").kind == "unknown_model"
    assert wire_error(ConfigError("bad name"), "request 'r'").to_error() == {
        "kind": "bad_request", "message": "bad name"}
    assert not caplog.records


def test_anything_else_is_internal_and_logged(caplog):
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        with caplog.at_level(logging.ERROR, "rootproc"):
            err = wire_error(exc, "request 'r', ctr@3")
    assert err.kind == "internal" and str(err) == "internal error: RuntimeError: boom"
    assert "request 'r', ctr@3: internal error" in caplog.text and "Traceback" in caplog.text
