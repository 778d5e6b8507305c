"""Root -> leaf over shared memory, against the socket path, with real processes."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import _trim
from _trim import Batch, ColumnSpec, Layout, compile_plan
from _trim.transport.shm import SlotRing
from rootproc.client.scoring_client import ScoringClient
from tests.root.world import CANDIDATE_IDS, MODELS, USER_IDS
from tests.support.procs import Client, free_tcp_port, ping

from .conftest import metric, segments_of, shm_root, spawn_root

pytestmark = pytest.mark.slow


def request_ids(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    return int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, size=n, replace=False)


def test_scores_equal_the_socket_path_and_the_ring_goes_on_exit(world, leaves, process_runner):
    shm = shm_root(process_runner, world, leaves, name="root-shm")
    sock = spawn_root(process_runner, world, leaves, name="root-sock")
    with ScoringClient(shm.endpoint) as a, ScoringClient(sock.endpoint) as b:
        for seed in range(4):
            user, cands = request_ids(seed)
            ra, rb = a.score(user, cands), b.score(user, cands)
            assert ra.ok and rb.ok and not ra.errors and not rb.errors, (ra.errors, rb.errors)
            assert sorted(ra.scores) == sorted(MODELS)
            for key in MODELS:
                np.testing.assert_array_equal(ra.scores[key], rb.scores[key], err_msg=key)
            for r in ra.results:
                assert r["transport"] == "shm" and "wire_bytes" not in r, r
            assert all("transport" not in r for r in rb.results)
            assert [r["bytes_sent"] for r in ra.results] == [r["bytes_sent"] for r in rb.results]
    assert len(segments_of(shm.pid)) == 2  # one ring per leaf link
    assert not segments_of(sock.pid)
    bind = shm.endpoint[len("ipc://"):]
    assert os.path.exists(bind)
    assert shm.stop() == 0  # SIGTERM: drain, then unlink the rings and the socket file
    assert not segments_of(shm.pid)
    assert not os.path.exists(bind)


def test_batches_larger_than_a_slot_span_contiguous_slots(world, leaves, process_runner):
    """The leaf takes any range within the segment: a batch over one slot
    goes through shared memory in a run of slots, scored as over the socket."""
    port = free_tcp_port()
    shm = shm_root(process_runner, world, leaves, port=port, name="root-runs",
                   shm={"slot_bytes": 256, "slots": 4096})
    sock = spawn_root(process_runner, world, leaves, name="root-sock")
    with ScoringClient(shm.endpoint) as a, ScoringClient(sock.endpoint) as b:
        for seed in range(3):
            user, cands = request_ids(seed)
            ra, rb = a.score(user, cands), b.score(user, cands)
            assert ra.ok and rb.ok and not ra.errors and not rb.errors, (ra.errors, rb.errors)
            for r in ra.results:
                assert r["transport"] == "shm" and r["bytes_sent"] > 256, r
            for key in MODELS:
                np.testing.assert_array_equal(ra.scores[key], rb.scores[key], err_msg=key)
    assert metric(port, "trimmer_root_shm_fallback_total") == 0
    assert metric(port, "trimmer_root_shm_sent_total") == 3 * len(MODELS)
    links = {link["leaf"]: link for link in ping(shm.endpoint, timeout=5)["leaves"]}
    assert all(link["shm"]["held"] == 0 for link in links.values()), links   # every run came back
    assert "sent over the socket" not in shm.log()


def test_batches_larger_than_the_ring_fall_back_to_the_socket(world, leaves, process_runner):
    port = free_tcp_port()
    shm_root(process_runner, world, leaves, port=port, shm={"slot_bytes": 256, "slots": 2})
    root = process_runner.procs[-1]
    with ScoringClient(root.endpoint) as client:
        user, cands = request_ids(1)
        res = client.score(user, cands, models=["ctr@3"])
        assert res.ok and not res.errors and "transport" not in res.results[0]
    assert metric(port, "trimmer_root_shm_fallback_total", reason="too_large") == 1
    assert metric(port, "trimmer_root_shm_sent_total") == 0
    # Never silent: the log says which link, how big the batch and the ring were.
    assert re.search(r"leaf leaf-0 \(ipc://[^)]*\): a \d+-byte batch of ctr@3 is larger than the "
                     r"shared-memory ring \(2 slots of 256 bytes\): sent over the socket",
                     root.log()), root.log()


def test_no_free_slot_falls_back_and_slots_come_back(world, leaves, process_runner):
    """One slot, no wait: a request's second model for the same leaf finds the
    slot still held by the first. The leaf is frozen while the root sends
    both, so its reply to the first cannot free the slot in between (the root
    reads replies between one model's send and the next: on a loaded machine
    the reply could otherwise win)."""
    port = free_tcp_port()
    shm_root(process_runner, world, leaves, port=port, shm={"slots": 1, "wait_ms": 0})
    root = process_runner.procs[-1]
    pid = _leaf_pid(root.endpoint, "leaf-0")
    with ScoringClient(root.endpoint) as client:
        for seed in range(3):
            user, cands = request_ids(seed)
            os.kill(pid, signal.SIGSTOP)
            try:
                client.submit(user, cands, models=["ctr@3", "eng@1"], deadline_ms=60_000)
                until = time.monotonic() + 60
                while metric(port, "trimmer_root_shm_fallback_total", reason="no_slot") <= seed:
                    assert time.monotonic() < until, "the second model never fell back"
                    time.sleep(0.05)
            finally:
                os.kill(pid, signal.SIGCONT)
            res = client.receive(timeout_ms=60_000)
            assert res is not None and res.ok and not res.errors, res and res.errors
            transports = [r.get("transport", "socket") for r in res.results]
            assert transports == ["shm", "socket"], transports
            ref = client.score(user, cands, models=["eng@1"])  # the slot is free again
            assert ref.results[0]["transport"] == "shm"
            np.testing.assert_array_equal(ref.scores["eng@1"], res.scores["eng@1"])
    assert metric(port, "trimmer_root_shm_fallback_total", reason="no_slot") == 3
    assert metric(port, "trimmer_root_shm_sent_total") == 6


def test_slot_held_past_the_deadline_until_the_reply(world, leaves, process_runner):
    port = free_tcp_port()
    shm_root(process_runner, world, leaves, port=port, shm={"slots": 1, "wait_ms": 0},
             ping_interval_ms=50)
    root = process_runner.procs[-1]
    pid = _leaf_pid(root.endpoint, "leaf-0")
    with ScoringClient(root.endpoint) as client:
        user, cands = request_ids(2)
        os.kill(pid, signal.SIGSTOP)
        try:
            res = client.score(user, cands, models=["ctr@3"], deadline_ms=200)
            assert res.results[0]["error"]["kind"] == "deadline"
            # The frozen leaf may still read the slot: the next batch must not reuse it.
            res = client.score(user, cands, models=["ctr@3"], deadline_ms=200)
            assert res.results[0]["error"]["kind"] == "deadline"
            assert "transport" not in res.results[0]
            assert metric(port, "trimmer_root_shm_fallback_total", reason="no_slot") == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        # The late replies free the slot.
        for _ in range(100):
            res = client.score(user, cands, models=["ctr@3"])
            if res.ok and res.results[0].get("transport") == "shm":
                break
        assert res.results[0].get("transport") == "shm", res.results
        assert not res.errors


def _leaf_pid(root_endpoint: str, leaf: str) -> int:
    pong = ping(root_endpoint, timeout=5)
    return next(link["pid"] for link in pong["leaves"] if link["leaf"] == leaf)


def test_forced_transports(world, leaves, process_runner):
    """auto with shm off: socket; transport "shm" forces it without the root-wide switch."""
    cfg_leaves = {"leaf-0": leaves["leaf-0"], "leaf-1": leaves["leaf-1"]}
    root = spawn_root(process_runner, world, cfg_leaves, name="root-forced",
                      shm={"enabled": False, "slot_bytes": 1 << 20, "slots": 2},
                      leaves=[{"name": "leaf-0", "endpoints": [leaves["leaf-0"]], "transport": "shm"},
                              {"name": "leaf-1", "endpoints": [leaves["leaf-1"]]}])
    with ScoringClient(root.endpoint) as client:
        user, cands = request_ids(3)
        res = client.score(user, cands, models=["ctr@3", "div@2"])
        assert res.ok and not res.errors
        by_model = {r["model"]: r.get("transport") for r in res.results}
        assert by_model == {"ctr@3": "shm", "div@2": None}
    assert len(segments_of(root.pid)) == 1
    links = {link["leaf"]: link for link in ping(root.endpoint, timeout=5)["leaves"]}
    assert links["leaf-0"]["transport"] == "shm"  # what an operator sees (trimmer health / status)
    assert links["leaf-0"]["shm"] == {"slots": 2, "slot_bytes": 1 << 20, "held": 0}
    assert links["leaf-1"]["transport"] == "socket" and "shm" not in links["leaf-1"]


def test_ring_too_big_for_dev_shm_is_a_clear_start_up_error(world, leaves, tmp_path):
    from tests.root.world import root_config, write_root_config
    cfg = root_config(world, leaves, f"ipc://{tmp_path}/r.ipc",
                      shm={"enabled": True, "slot_bytes": 1 << 40, "slots": 64})
    path = write_root_config(tmp_path / "root.json", cfg)
    done = subprocess.run([sys.executable, "-m", "rootproc", "--config", path],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "free, the ring needs" in done.stderr and "lower the slot size" in done.stderr
    assert not os.path.exists(tmp_path / "r.ipc")


def test_bad_config_names_the_problem(world, leaves, tmp_path):
    from rootproc.settings import config_from_dict
    from tests.root.world import root_config
    cfg = root_config(world, leaves, "ipc:///tmp/x.ipc",
                      shm={"enabled": "yes", "slots": 0, "size": 1})
    with pytest.raises(ValueError, match="enabled must be true or false.*slots must be a positive"):
        config_from_dict(cfg)
    cfg = root_config(world, leaves, "ipc:///tmp/x.ipc")
    cfg["leaves"][0]["transport"] = "carrier-pigeon"
    with pytest.raises(ValueError, match="transport must be one of"):
        config_from_dict(cfg).validate()


def encoded(rows: int = 4) -> tuple[Layout, Batch]:
    layout = Layout([ColumnSpec("pin_ctr_7d", "float32"), ColumnSpec("pin_quality", "float32"),
                     ColumnSpec("user_emb", "float32", (8,), per_request=True),
                     ColumnSpec("user_recent_pins", "int64", ragged=True, per_request=True)])
    arrays = {"pin_ctr_7d": np.arange(rows, dtype="f4"), "pin_quality": np.ones(rows, "f4"),
              "user_emb": np.ones((1, 8), "f4"),
              "user_recent_pins": (np.arange(3, dtype=np.int64), np.array([0, 3], np.int64))}
    return layout, Batch.from_arrays(layout, arrays, rows)


def test_leaf_answers_bad_descriptors_and_keeps_serving(leaves):
    layout, batch = encoded()
    plan = compile_plan(layout, layout.names)
    with SlotRing("test", 1 << 16, 2) as ring, Client(leaves["leaf-0"]) as c:
        slot = ring.acquire()
        n = _trim.encode_into(plan, batch, ring.slot(slot))
        good = ring.descriptor(slot, n)
        base = {"type": "score", "model": "ctr@3", "rows": 4, "compression": "none"}
        header, frames = c.request({**base, "shm": good})
        assert header["ok"], header
        scores = np.frombuffer(frames[0], "<f4")
        for shm, kind, text in [
                ({**good, "segment": "trimmer-1-x-00000000"}, "bad_request", "does not exist"),
                ({**good, "offset": ring.nbytes}, "bad_request", "outside segment"),
                ({**good, "segment": "../etc/passwd"}, "bad_request", "not a trimmer segment"),
                ({**good, "nbytes": 16}, "decode_error", "does not decode"),
                ("slot 0", "bad_request", "'shm' must be an object"),
                ({**good, "nbytes": 1 << 40}, "too_large", "limit")]:
            header, _ = c.request({**base, "shm": shm})
            assert not header["ok"] and header["error"]["kind"] == kind, (shm, header)
            assert text in header["error"]["message"], header
        header, _ = c.request({**base, "shm": good, "compression": "lz4", "raw_nbytes": n})
        assert header["error"]["kind"] == "bad_request" and "never compressed" in header["error"]["message"]
        header, _ = c.request({**base, "shm": good}, b"extra")
        assert header["error"]["kind"] == "bad_request" and "1 frame" in header["error"]["message"]
        header, frames = c.request({**base, "shm": good})
        assert header["ok"] and np.array_equal(np.frombuffer(frames[0], "<f4"), scores)
