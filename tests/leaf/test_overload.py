"""A leaf under overload: requests past the root's deadline are answered
`deadline` instead of run, and a full per-model queue sheds new requests
with `overloaded`; either way the leaf recovers at once."""
import urllib.request

import numpy as np
import pytest

from tests.support.models import direct_scores, encode_columns, random_columns
from tests.support.procs import Client, free_tcp_port, ping

from .conftest import SLOW_INPUTS

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ROWS = 256   # ~0.2 s of slow@1's forward pass


def metric(port: int, line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def slow_leaf(process_runner, repo, name, *args):
    port = free_tcp_port()
    leaf = process_runner.leaf(repo.root, models=["slow@1"], name=name,
                               args=["--metrics-port", str(port), "--metrics-addr", "127.0.0.1",
                                     *args])
    return leaf, port


def score_header(**extra):
    return {"type": "score", "model": "slow@1", "rows": ROWS, **extra}


def recv_all(c, ids, timeout=30.0):
    replies = {}
    while len(replies) < len(ids):
        header, frames = c.recv(timeout=timeout)
        replies[header["id"]] = (header, frames)
    assert set(replies) == set(ids)
    return replies


def kinds(replies):
    return [h["error"]["kind"] if not h["ok"] else "ok" for h, _ in replies.values()]


@pytest.mark.slow
def test_backlog_past_its_deadline_is_answered_not_run(process_runner, repo, rng):
    leaf, port = slow_leaf(process_runner, repo, "expiry", "--max-wait-ms", "0")
    msg = encode_columns(SLOW_INPUTS, random_columns(SLOW_INPUTS, ROWS, rng), ROWS)
    n = 40   # ~8 s of forward passes if all of them ran
    with Client(leaf.endpoint) as c:
        ids = [c.send(score_header(deadline_ms=300), msg) for _ in range(n)]
        got = kinds(recv_all(c, ids))
        expired = got.count("deadline")
        assert got.count("ok") + expired == n, got
        # Only what was picked up within 300 ms ran; the rest cost a reply each.
        assert expired >= n - 10, got
        assert metric(port, 'trimmer_leaf_expired_total{model="slow@1"}') == expired
        assert metric(port, 'trimmer_leaf_infer_seconds_count{model="slow@1"}') == n - expired
        # The backlog is gone: a fresh request runs next, not behind 8 s of stale work.
        cols = random_columns(SLOW_INPUTS, ROWS, rng)
        header, scores = c.score("slow@1", encode_columns(SLOW_INPUTS, cols, ROWS), ROWS,
                                 timeout=5, deadline_ms=5000)
    assert header["ok"], header
    np.testing.assert_allclose(scores, direct_scores(repo.models["slow@1"][0], SLOW_INPUTS,
                                                     cols, ROWS), rtol=1e-5)


def test_dynamic_batching_skips_expired_requests(process_runner, repo, rng):
    # Nothing merges with the 256-row request; the small ones merge with each other.
    leaf, port = slow_leaf(process_runner, repo, "window", "--max-wait-ms", "20",
                           "--max-batch-rows", str(ROWS))
    busy = encode_columns(SLOW_INPUTS, random_columns(SLOW_INPUTS, ROWS, rng), ROWS)
    small = [random_columns(SLOW_INPUTS, 8, rng) for _ in range(3)]
    msgs = [encode_columns(SLOW_INPUTS, cols, 8) for cols in small]
    with Client(leaf.endpoint) as c:
        first = c.send(score_header(), busy)
        # Queued behind `first`, which runs for far longer than 1 ms.
        live_a = c.send({**score_header(rows=8)}, msgs[0])
        stale = c.send({**score_header(rows=8), "deadline_ms": 1}, msgs[1])
        live_b = c.send({**score_header(rows=8), "deadline_ms": 60_000}, msgs[2])
        replies = recv_all(c, [first, live_a, stale, live_b])
    assert replies[first][0]["ok"], replies[first][0]
    assert replies[stale][0]["error"]["kind"] == "deadline", replies[stale][0]
    assert "deadline" in replies[stale][0]["error"]["message"]
    path = repo.models["slow@1"][0]
    for rid, cols in ((live_a, small[0]), (live_b, small[2])):
        header, frames = replies[rid]
        assert header["ok"], header
        # Merged with each other only: the expired request's rows were never run.
        assert header["batch_rows"] == 16, header
        np.testing.assert_allclose(np.frombuffer(frames[0], "<f4"),
                                   direct_scores(path, SLOW_INPUTS, cols, 8), rtol=1e-5)
    assert metric(port, 'trimmer_leaf_expired_total{model="slow@1"}') == 1


def test_full_queue_sheds_with_overloaded_and_leaf_stays_healthy(process_runner, repo, rng):
    leaf, port = slow_leaf(process_runner, repo, "bound", "--max-wait-ms", "0", "--max-queue", "2")
    msg = encode_columns(SLOW_INPUTS, random_columns(SLOW_INPUTS, ROWS, rng), ROWS)
    n = 12
    with Client(leaf.endpoint) as c:
        ids = [c.send(score_header(), msg) for _ in range(n)]
        replies = recv_all(c, ids)
        got = kinds(replies)
        shed = got.count("overloaded")
        # One may be running, two queued: the others are refused on arrival.
        assert got.count("ok") + shed == n, got
        assert 2 <= got.count("ok") <= 3 and shed >= n - 3, got
        err = next(h["error"] for h, _ in replies.values() if not h["ok"])
        assert "limit 2" in err["message"] and err["queued"] == 2, err
        assert metric(port, 'trimmer_leaf_errors_total{kind="overloaded"}') == shed
        assert ping(leaf.endpoint, timeout=5)["models"][0]["ready"]
        header, _ = c.score("slow@1", msg, ROWS, timeout=10)
        assert header["ok"], header
    assert leaf.returncode is None


def test_bad_deadline_and_max_queue_are_refused(process_runner, repo, rng, tmp_path):
    from .test_lifecycle import run_cli
    r = run_cli("--repo", str(repo.root), "--bind", f"ipc://{tmp_path}/x.ipc", "--max-queue", "0")
    assert r.returncode == 2 and "--max-queue" in r.stderr
    (tmp_path / "leaf.json").write_text('{"max_queue": "many"}')
    r = run_cli("--config", str(tmp_path / "leaf.json"), "--repo", str(repo.root),
                "--bind", f"ipc://{tmp_path}/x.ipc")
    assert r.returncode == 2 and "--max-queue" in r.stderr
    assert not list(tmp_path.glob("*.ipc"))
    leaf, _ = slow_leaf(process_runner, repo, "fields", "--max-queue", "4")
    msg = encode_columns(SLOW_INPUTS, random_columns(SLOW_INPUTS, 8, rng), 8)
    with Client(leaf.endpoint) as c:
        for bad in (-1, "soon", True):
            header, _ = c.score("slow@1", msg, 8, deadline_ms=bad)
            assert header["error"]["kind"] == "bad_request" and "deadline_ms" in \
                header["error"]["message"], header
        assert c.score("slow@1", msg, 8, deadline_ms=2.5e4)[0]["ok"]


def test_a_deadline_that_passes_while_the_batch_window_waits_is_not_run(process_runner, repo,
                                                                          rng):
    """Rule leaf.deadline-queue: a request whose deadline passed while it
    waited for a batch to fill is answered `deadline`, not run."""
    leaf, port = slow_leaf(process_runner, repo, "window-deadline", "--max-wait-ms", "50")
    msg = encode_columns(SLOW_INPUTS, random_columns(SLOW_INPUTS, 4, rng), 4)
    with Client(leaf.endpoint) as c:
        ids = []
        for i in range(12):
            ids.append(c.send({"type": "score", "model": "slow@1", "rows": 4,
                               "deadline_ms": 0.1 + 0.06 * i}, msg))
        got = kinds(recv_all(c, ids))
    assert got == ["deadline"] * 12, got
    assert metric(port, 'trimmer_leaf_infer_seconds_count{model="slow@1"}') == 0
