"""Faults: malformed requests, a leaf killed mid-load, a stopped leaf, SIGTERM drain."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import orjson
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.support.procs import Client

from .conftest import leaves_healthy, spawn_leaves, spawn_root
from .world import CANDIDATE_IDS, MODELS, USER_IDS

pytestmark = pytest.mark.slow

CANDS = CANDIDATE_IDS[:16]
USER = int(USER_IDS[0])


def header(**fields) -> bytes:
    return orjson.dumps({"v": 1, "type": "score", "id": "m1", "user": USER, **fields})


def ids_frame(ids) -> bytes:
    return np.asarray(ids, dtype="<i8").tobytes()


MALFORMED = [
    # (frames after the identity, expected error kind)
    ([b"not json", ids_frame(CANDS)], "bad_request"),
    ([orjson.dumps([1, 2]), ids_frame(CANDS)], "bad_request"),
    ([orjson.dumps({"v": 2, "type": "score", "id": "x"}), ids_frame(CANDS)], "bad_request"),
    ([orjson.dumps({"v": 1, "id": "x"}), ids_frame(CANDS)], "bad_request"),
    ([orjson.dumps({"v": 1, "type": "explode", "id": "x"})], "bad_request"),
    ([header()], "bad_request"),                                   # no candidate frame
    ([header(), ids_frame(CANDS), b"extra"], "bad_request"),
    ([header(), b"\x01" * 7], "bad_request"),                      # not whole int64s
    ([header(user="42"), ids_frame(CANDS)], "bad_request"),
    ([header(user=True), ids_frame(CANDS)], "bad_request"),
    ([header(id="x" * 200), ids_frame(CANDS)], "bad_request"),
    ([header(models="ctr@3"), ids_frame(CANDS)], "bad_request"),
    ([header(deadline_ms=-5), ids_frame(CANDS)], "bad_request"),
    ([header(), ids_frame(np.arange(100))], "too_large"),          # max_candidates 64
    ([header(), b"\0" * 8 * 64 + b"\0" * 9000], "too_large"),      # over max_request_nbytes
    ([orjson.dumps({"v": 1, "type": "score", "id": "x", "pad": "a" * 70000}),
      ids_frame(CANDS)], "bad_request"),                           # header over 64 KiB
]


def test_malformed_requests_get_error_replies(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves, max_candidates=64, max_request_nbytes=4096)
    with Client(root.endpoint) as raw:
        for frames, kind in MALFORMED:
            raw.send_raw(*frames)
            reply, rest = raw.recv(timeout=10)
            assert reply["type"] == "error" and reply["ok"] is False, (frames[0][:60], reply)
            assert reply["error"]["kind"] == kind, (frames[0][:60], reply)
            assert reply["error"]["message"]
            assert rest == []
        # A REQ-style envelope (empty delimiter) is answered with the delimiter kept.
        raw.send_raw(b"", header(), ids_frame(CANDS))
        frames = raw.sock.recv_multipart()
        assert frames[0] == b"" and orjson.loads(frames[1])["type"] == "scores"
    with ScoringClient(root.endpoint) as client:
        res = client.score(USER, CANDS)
        assert res.ok and not res.errors and sorted(res.scores) == sorted(MODELS)
    assert root.returncode is None


def test_absurd_frame_drops_the_connection_and_the_root_keeps_serving(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves, max_request_nbytes=4096)
    # 16 x max(4096, 64 KiB header limit) is the hard cap; this is past it.
    with Client(root.endpoint) as raw:
        raw.send_raw(header(), b"\0" * (2 << 20))
        with pytest.raises(TimeoutError):
            raw.recv(timeout=1.5)
    with ScoringClient(root.endpoint) as client:
        assert client.score(USER, CANDS).ok
    assert root.returncode is None


def test_leaf_killed_mid_load_then_restarted(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves)
    leaf1 = next(p for p in process_runner.procs if p.name == "leaf-1")
    deadline_ms = 1500
    with ScoringClient(root.endpoint) as client:
        results = []
        for i in range(60):
            client.submit(USER, CANDS, deadline_ms=deadline_ms)
            if i == 20:
                leaf1.proc.kill()
                leaf1.proc.wait()
            while (r := client.receive(0)) is not None:
                results.append(r)
        t_end = time.monotonic() + (deadline_ms + 3000) / 1000
        while client.in_flight and time.monotonic() < t_end:
            r = client.receive(500)
            if r is not None:
                results.append(r)
        assert len(results) == 60 and client.in_flight == 0
        assert all(r.ok for r in results)
        failed = [r for r in results if "div@2" in r.errors]
        assert failed, "killing leaf-1 should fail some div@2 results"
        for r in failed:
            assert r.errors["div@2"]["kind"] in ("deadline", "unavailable")
            assert sorted(r.scores) == ["ctr@3", "eng@1"]  # the other leaf still answers
        # Restart leaf-1 on the same endpoint: the root reconnects and uses it again.
        process_runner.leaf(world["repo"], models=["div@2"], name="leaf-1", bind=leaves["leaf-1"],
                            args=["--max-wait-ms", "0"])
        root.wait_ready(30, ready=leaves_healthy)
        # Healthy links first, then its models ready in its pongs: scored within a while.
        t_end = time.monotonic() + 30
        while True:
            res = client.score(USER, CANDS)
            if (res.ok and not res.errors) or time.monotonic() > t_end:
                break
            time.sleep(0.2)
        assert res.ok and not res.errors, res.errors


def test_stopped_leaf_times_out_and_sigterm_drains(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves)
    leaf1 = next(p for p in process_runner.procs if p.name == "leaf-1")
    with ScoringClient(root.endpoint) as client:
        # A frozen leaf: its model errors at the deadline, the others return.
        os.kill(leaf1.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            res = client.score(USER, CANDS, deadline_ms=300)
            assert time.monotonic() - t0 < 5
            assert res.ok and res.errors["div@2"]["kind"] == "deadline"
            assert sorted(res.scores) == ["ctr@3", "eng@1"]
            # Requests parked on the frozen leaf when SIGTERM arrives are still answered.
            ids = [client.submit(USER, CANDS, deadline_ms=8000) for _ in range(5)]
            time.sleep(0.3)
            root.signal(signal.SIGTERM)
            time.sleep(0.3)
            late = client.score(USER, CANDS, deadline_ms=8000, timeout_ms=5000)
            assert not late.ok and late.error["kind"] == "shutting_down"
            assert root.returncode is None  # still draining
        finally:
            os.kill(leaf1.pid, signal.SIGCONT)
        got = {}
        while len(got) < len(ids):
            r = client.receive(10_000)
            assert r is not None, "a drained request got no reply"
            got[r.id] = r
        assert set(got) == set(ids)
        for r in got.values():
            assert r.ok and not r.errors, r.errors
    assert root.wait(15) == 0


def test_a_header_with_a_number_beyond_float64_still_echoes_its_id(world, process_runner):
    """Rule envelope.id-echo: 1e400 and 2**70 are valid JSON numbers (orjson
    alone refuses them): the header is read and the id echoed (a deadline
    that large is the root's max_deadline_ms, rule score.deadline; so is
    null: the root's default)."""
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves)
    with Client(root.endpoint) as raw:
        for i, value in enumerate((b"1e400", b"1180591620717411303424", b"null")):
            raw.send_raw(b'{"v": 1, "type": "score", "id": "big-%d", "user": %d, '
                         b'"deadline_ms": %s}' % (i, USER, value), ids_frame(CANDS))
            reply, _ = raw.recv(timeout=10)
            assert reply["id"] == f"big-{i}", reply
            assert reply["type"] == "scores" and reply["ok"] is True, reply
        raw.send_raw(b'{"v": 1, "type": "score", "id": "user", "user": 1e400}',
                     ids_frame(CANDS))
        reply, _ = raw.recv(timeout=10)
        assert reply["id"] == "user" and reply["error"]["kind"] == "bad_request", reply
        assert "'user'" in reply["error"]["message"], reply
        raw.send_raw(b'{"v": 1, "type": "score", "id": "nan", "deadline_ms": NaN}',
                     ids_frame(CANDS))                         # not JSON: no id to echo
        reply, _ = raw.recv(timeout=10)
        assert reply["id"] is None and "not JSON" in reply["error"]["message"], reply


def test_a_leaf_whose_connection_drops_fails_its_models_at_once_not_at_the_deadline(
        world, process_runner):
    """A leaf that read a request and then went away (killed while frozen)
    will never answer it, nor any other process behind its endpoint: the
    root reads what the connection carried, then answers that model
    `unavailable` (or resends it to another replica) at once, not at the
    request's deadline (rule `leaf-reply.connection-lost`)."""
    leaves = spawn_leaves(process_runner, world)["ipc"]
    root = spawn_root(process_runner, world, leaves)
    leaf1 = next(p for p in process_runner.procs if p.name == "leaf-1")
    with ScoringClient(root.endpoint) as client:
        os.kill(leaf1.pid, signal.SIGSTOP)
        # div@2 waits in the frozen leaf; 10 s, the root's max_deadline_ms.
        rid = client.submit(USER, CANDS, deadline_ms=10_000)
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(leaf1.pid, signal.SIGKILL)
        res = client.receive(20_000)
        took = time.monotonic() - t0
        assert res is not None and res.id == rid, "no reply"
        print(f"\nanswered {took:.2f} s after the leaf was killed")
        assert res.ok and sorted(res.scores) == ["ctr@3", "eng@1"], res.errors
        assert res.errors["div@2"]["kind"] == "unavailable", res.errors
        assert "connection" in res.errors["div@2"]["message"], res.errors
    leaf1.wait(10)
