"""A real leaf process over real sockets: scores, signature checks, bad input."""
import os
import threading

import numpy as np
import orjson
import pytest
import zmq

from _trim.transport.protocol import compress
from tests.support.models import direct_scores, encode_columns, random_columns, spec
from tests.support.procs import Client, ping

from .conftest import BAD_INPUTS, CTR_INPUTS, ENG_INPUTS, MAX_MESSAGE_BYTES

# TorchScript is what leaves serve; its deprecation notice is not this suite's concern.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def check_scores(repo, key, inputs, cols, rows, header, scores, exact=True):
    assert header["ok"], header
    assert header["model"] == key and header["rows"] == rows
    assert set(header["timing_us"]) == {"queue", "decode", "infer"}
    expected = direct_scores(repo.models[key][0], inputs, cols, rows)
    if exact:
        np.testing.assert_array_equal(scores, expected)
    else:
        np.testing.assert_allclose(scores, expected, rtol=1e-5)


def served_ok(client, repo, rng):
    cols = random_columns(ENG_INPUTS, 3, rng)
    header, scores = client.score("eng@1", encode_columns(ENG_INPUTS, cols, 3), 3)
    check_scores(repo, "eng@1", ENG_INPUTS, cols, 3, header, scores, exact=False)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_scores_equal_direct_call_ipc(leaf, repo, rng, rows):
    cols = random_columns(CTR_INPUTS, rows, rng)
    with Client(leaf.endpoint) as c:
        header, scores = c.score("ctr@3", encode_columns(CTR_INPUTS, cols, rows), rows)
    check_scores(repo, "ctr@3", CTR_INPUTS, cols, rows, header, scores, exact=False)


def test_scores_over_tcp_and_lz4(process_runner, repo, rng):
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="tcp", transport="tcp",
                               args=["--max-wait-ms", "0"])
    assert leaf.endpoint.startswith("tcp://127.0.0.1:")
    cols = random_columns(CTR_INPUTS, 50, rng)
    msg = encode_columns(CTR_INPUTS, cols, 50)
    with Client(leaf.endpoint) as c:
        header, scores = c.score("ctr@3", msg, 50)
        check_scores(repo, "ctr@3", CTR_INPUTS, cols, 50, header, scores)
        assert header["batch_rows"] == 50  # batching off: never merged
        header, lz = c.score("ctr@3", compress(msg), 50, compression="lz4", raw_nbytes=len(msg))
        assert header["ok"], header
        np.testing.assert_array_equal(lz, scores)


def test_zero_rows(leaf):
    cols = random_columns(CTR_INPUTS, 0, np.random.default_rng(0))
    with Client(leaf.endpoint) as c:
        header, scores = c.score("ctr@3", encode_columns(CTR_INPUTS, cols, 0), 0)
    assert header["ok"] and len(scores) == 0


def test_ping_advertises_models(leaf, repo):
    pong = ping(leaf.endpoint)
    assert pong["type"] == "pong" and pong["ok"] and pong["role"] == "leaf"
    assert pong["name"] == "shared" and pong["pid"] == leaf.pid
    assert {m["model"]: m["signature_hash"] for m in pong["models"]} == {
        key: repo.models[key][1].signature_hash for key in ("ctr@3", "eng@1", "bad@1")}
    assert all(m["ready"] for m in pong["models"])


def test_signature_mismatch_names_every_problem_in_one_reply(leaf, repo, rng):
    # Missing pin_emb and user_recent; pin_ctr as float64; pin_lang as a vector;
    # pin_tags dense instead of ragged; an extra column the model does not read.
    sent = [spec("pin_ctr", "float64"), spec("user_emb", shape=(4,), per_request=True),
            spec("pin_lang", "int32", shape=(2,)), spec("pin_new", "bool"),
            spec("pin_tags", "int64"), spec("unused_extra", shape=(3,))]
    cols = random_columns(sent, 5, rng)
    with Client(leaf.endpoint) as c:
        header, _ = c.score("ctr@3", encode_columns(sent, cols, 5), 5)
        err = header["error"]
        assert header["ok"] is False and err["kind"] == "signature_mismatch"
        assert sorted(err["missing"]) == ["pin_emb", "user_recent"]
        assert sorted(err["mismatched"]) == ["pin_ctr", "pin_lang", "pin_tags"]
        for name in ("pin_emb", "user_recent", "pin_ctr", "pin_lang", "pin_tags"):
            assert name in err["message"]
        assert "unused_extra" not in err["message"]
        served_ok(c, repo, rng)


def test_extra_columns_are_ignored(leaf, repo, rng):
    sent = ENG_INPUTS + [spec("zz_extra", "int64", ragged=True), spec("aa_extra", shape=(8,))]
    cols = random_columns(sent, 9, rng)
    with Client(leaf.endpoint) as c:
        header, scores = c.score("eng@1", encode_columns(sent, cols, 9), 9)
    check_scores(repo, "eng@1", ENG_INPUTS, cols, 9, header, scores, exact=False)


def test_model_exception_is_a_model_error_and_leaf_keeps_serving(leaf, repo, rng):
    cols = random_columns(BAD_INPUTS, 4, rng)
    cols["x"][2] = -1.0
    with Client(leaf.endpoint) as c:
        header, _ = c.score("bad@1", encode_columns(BAD_INPUTS, cols, 4), 4)
        assert header["error"]["kind"] == "model_error"
        assert "negative values in x" in header["error"]["message"]
        cols["x"][2] = 1.0
        header, scores = c.score("bad@1", encode_columns(BAD_INPUTS, cols, 4), 4)
        check_scores(repo, "bad@1", BAD_INPUTS, cols, 4, header, scores)


def test_failing_request_does_not_fail_requests_merged_with_it(leaf, repo, rng):
    batches = [random_columns(BAD_INPUTS, 3, rng) for _ in range(6)]
    batches[3]["x"][0] = -5.0
    with Client(leaf.endpoint) as c:
        ids = [c.send({"type": "score", "model": "bad@1", "rows": 3},
                      encode_columns(BAD_INPUTS, b, 3)) for b in batches]
        replies = {}
        for _ in ids:
            header, frames = c.recv()
            replies[header["id"]] = (header, frames)
    for i, rid in enumerate(ids):
        header, frames = replies[rid]
        if i == 3:
            assert header["error"]["kind"] == "model_error"
        else:
            check_scores(repo, "bad@1", BAD_INPUTS, batches[i], 3, header,
                         np.frombuffer(frames[0], "<f4"))


def test_garbage_is_answered_and_the_next_request_served(leaf, repo, rng):
    good = encode_columns(ENG_INPUTS, random_columns(ENG_INPUTS, 3, rng), 3)
    score = {"v": 1, "type": "score", "id": "g", "model": "eng@1", "rows": 3}
    cases = [
        ([b"\xff\x00garbage"], "bad_request"),
        ([b"[1, 2]"], "bad_request"),
        ([orjson.dumps({"v": 2, "type": "score", "id": "g"})], "bad_request"),
        ([orjson.dumps({"v": 1, "type": "explode", "id": "g"})], "bad_request"),
        ([orjson.dumps({**score, "rows": "3"}), good], "bad_request"),
        ([orjson.dumps({k: v for k, v in score.items() if k != "rows"}), good], "bad_request"),
        ([orjson.dumps(score)], "bad_request"),
        ([orjson.dumps(score), good, good], "bad_request"),
        ([orjson.dumps({**score, "model": "nope@1"}), good], "unknown_model"),
        ([orjson.dumps({**score, "rows": 4}), good], "bad_request"),
        ([orjson.dumps(score), os.urandom(500)], "decode_error"),
        ([orjson.dumps(score), bytes(good[:-8])], "decode_error"),
        ([orjson.dumps({**score, "compression": "lz4", "raw_nbytes": len(good)}),
          b"\x00not lz4 at all\xff" * 3], "decode_error"),
        ([orjson.dumps({**score, "compression": "lz4", "raw_nbytes": MAX_MESSAGE_BYTES + 1}),
          compress(good)], "too_large"),
        ([orjson.dumps({**score, "compression": "zstd"}), good], "bad_request"),
    ]
    with Client(leaf.endpoint) as c:
        for frames, kind in cases:
            c.send_raw(*frames)
            header, _ = c.recv()
            assert header["ok"] is False and header["error"]["kind"] == kind, (frames[0], header)
            served_ok(c, repo, rng)


def test_req_socket_envelope(leaf):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(leaf.endpoint)
    try:
        s.send(orjson.dumps({"v": 1, "type": "ping", "id": "req"}))
        assert s.poll(10000)
        assert orjson.loads(s.recv())["type"] == "pong"
    finally:
        s.close()


def test_oversized_frame_is_refused_by_the_socket(leaf, repo, rng):
    with Client(leaf.endpoint) as c:
        c.send({"type": "score", "model": "eng@1", "rows": 1}, bytes(MAX_MESSAGE_BYTES + 4096))
        with pytest.raises(TimeoutError):
            c.recv(timeout=1.0)  # the connection was dropped, nothing was buffered
    assert leaf.returncode is None
    with Client(leaf.endpoint) as c:
        served_ok(c, repo, rng)


def test_many_concurrent_clients_with_dynamic_batching(leaf, repo):
    n_clients, per_client = 6, 8
    results, errors = {}, []

    def client(k):
        rng = np.random.default_rng(k)
        try:
            with Client(leaf.endpoint, zmq.Context.instance()) as c:
                sent = []
                for _ in range(per_client):  # all in flight at once
                    rows = int(rng.integers(1, 40))
                    cols = random_columns(ENG_INPUTS, rows, rng)
                    rid = c.send({"type": "score", "model": "eng@1", "rows": rows},
                                 encode_columns(ENG_INPUTS, cols, rows))
                    sent.append((rid, rows, cols))
                replies = [c.recv(timeout=30) for _ in sent]
                results[k] = (sent, replies)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    merged = 0
    for sent, replies in results.values():
        by_id = {h["id"]: (h, f) for h, f in replies}
        assert len(by_id) == len(sent)  # exactly one reply each
        for rid, rows, cols in sent:
            header, frames = by_id[rid]
            check_scores(repo, "eng@1", ENG_INPUTS, cols, rows, header,
                         np.frombuffer(frames[0], "<f4"), exact=False)
            merged += header["batch_rows"] > rows
    assert merged > 0, "dynamic batching never merged two requests"


def test_per_request_ragged_merges_only_within_one_user(leaf, repo, rng):
    base = random_columns(CTR_INPUTS, 5, rng)
    other_user = dict(base, user_recent=(np.array([7, 8, 9], np.int64), np.array([0, 3], np.int64)))
    sends = [base, base, other_user, base]
    with Client(leaf.endpoint) as c:
        ids = [c.send({"type": "score", "model": "ctr@3", "rows": 5},
                      encode_columns(CTR_INPUTS, cols, 5)) for cols in sends]
        replies = {h["id"]: (h, f) for h, f in (c.recv() for _ in ids)}
    for rid, cols in zip(ids, sends):
        header, frames = replies[rid]
        check_scores(repo, "ctr@3", CTR_INPUTS, cols, 5, header,
                     np.frombuffer(frames[0], "<f4"), exact=False)
    assert replies[ids[2]][0]["batch_rows"] == 5  # never merged with another user's list
