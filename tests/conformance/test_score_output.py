"""`trimmer score --output FILE`: one JSON line per request it sent, with the
ids it asked about and the scores (or errors) it got, so what a load run
scored can be checked without a proxy between it and the root."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from .messages import expected_scores

pytestmark = pytest.mark.slow


def trimmer_score(node, out, *args) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "signatures.cli", "score", "--endpoint", node.root.endpoint,
            "--feature-store", node.world["store"], "--no-progress", "--json",
            "--output", str(out), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_each_request_its_ids_and_scores(node, fake, tmp_path):
    out = tmp_path / "scores.jsonl"
    done = trimmer_score(node, out, "--requests", "24", "--concurrency", "4", "--candidates", "12",
                         "--models", "ctr@3", "div@2", "nosuch")
    assert done.returncode == 1, done.stderr   # every request has a failed model result
    report = json.loads(done.stdout)
    rows = lines(out)
    assert len(rows) == report["requests"] == 24
    assert len({r["id"] for r in rows}) == 24
    for row in rows:
        assert set(row) == {"id", "user", "candidates", "scores", "errors"}, row
        assert len(row["candidates"]) == 12
        assert sorted(row["scores"]) == ["ctr@3", "div@2"]
        assert row["errors"] == {"nosuch": {"kind": "unknown_model", "message": row["errors"][
            "nosuch"]["message"]}}
        for key, got in row["scores"].items():
            want = expected_scores(node.world, key, np.array(row["candidates"]), row["user"])
            # float32 written in its shortest form reads back exactly.
            np.testing.assert_array_equal(np.array(got, dtype="<f4"),
                                          np.asarray(want, dtype="<f4"), err_msg=key)
    assert report["model_errors"] == {"unknown_model": 24}


def test_a_failed_request_and_a_nan_score(node, fake, tmp_path):
    fake.script(answer=lambda h, f: fake.scores(h, f, [float("nan")] * h["rows"]))
    out = tmp_path / "scores.jsonl"
    done = trimmer_score(node, out, "--requests", "3", "--concurrency", "1", "--candidates", "2",
                         "--models", "div@2")
    assert done.returncode == 0, done.stderr
    assert [r["scores"]["div@2"] for r in lines(out)] == [[None, None]] * 3   # NaN as null
    done = trimmer_score(node, out, "--requests", "2", "--concurrency", "1", "--candidates", "3000")
    assert done.returncode == 1   # too many candidates: every request refused
    rows = lines(out)
    assert len(rows) == 2 and all(r["error"]["kind"] == "too_large" for r in rows), rows
    assert all(set(r) == {"id", "user", "candidates", "error"} and len(r["candidates"]) == 3000
               for r in rows)
