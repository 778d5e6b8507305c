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


def test_a_reply_whose_errors_would_not_fit_is_cut_to_fit():
    """Results whose errors add up past the 64 KiB header limit (a control
    character costs 6 bytes escaped): each keeps its kind and a fair share of
    its message, marked cut; results that fit are left as they are."""
    import orjson

    from _trim.transport.protocol import MAX_HEADER_NBYTES
    from rootproc.reply import bounded_error, fit_header
    errors = [bounded_error({"kind": "model_error", "message": f"{i:02d}" + "\x01" * 1998,
                             "missing": ["f" * 256] * 30}) for i in range(40)]
    assert all(len(e["missing"]) == 20 and e["missing_omitted"] == 10 for e in errors)
    header = {"type": "scores", "id": "r", "ok": True,
              "results": [{"model": f"m{i}@1", "ok": False, "error": e} for i, e in enumerate(errors)]}
    packed = fit_header(header, errors)
    assert len(packed) <= MAX_HEADER_NBYTES
    got = orjson.loads(packed)["results"]
    assert [r["error"]["kind"] for r in got] == ["model_error"] * 40
    assert all(r["error"]["cut"] is True and set(r["error"]) == {"kind", "message", "cut"}
               for r in got)
    assert all(r["error"]["message"].startswith(f"{i:02d}\x01") and len(r["error"]["message"]) > 100
               for i, r in enumerate(got))
    small = {"kind": "deadline", "message": "late"}
    assert orjson.loads(fit_header({"error": small}, [small])) == {"v": 1, "error": small}
