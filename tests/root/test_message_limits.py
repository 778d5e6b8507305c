"""Sizes agreed before sending (issue 24): a leaf advertises the largest
message it accepts in its pongs, and the root never sends it a larger one.

A real leaf with a small ``max_message_bytes`` drops the connection of a
peer that sends a larger frame (libzmq's MAXMSGSIZE): nothing answers the
request, and the link leaves rotation until it reconnects and pongs again.
The root must answer such a model ``too_large`` at once, naming the limit
and the size, and keep the replica in rotation for what fits.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.support.procs import free_tcp_port, ping

from .conftest import spawn_root
from .test_leaf_overload import metric
from .world import CANDIDATE_IDS, USER_IDS, assert_scores_match

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]

LIMIT = 64 * 1024   # the smallest a leaf accepts (a header's limit)
USER = int(USER_IDS[0])
BIG = np.resize(CANDIDATE_IDS, 2048)   # eng@1's message ~140 KB, ctr@3's ~17 KB
SMALL = CANDIDATE_IDS[:32]
MODELS = ["ctr@3", "eng@1", "div@2"]


@pytest.fixture(params=["socket", "shm"])
def small_leaf(world, process_runner, request):
    """leaf-0 (ctr@3, eng@1) accepting at most LIMIT bytes, leaf-1 (div@2) as usual,
    and a root reaching them over sockets, or shared memory with slots the
    message fits: {"root", "leaf0", "port"}."""
    shm = {"enabled": request.param == "shm", "slot_bytes": 1 << 20, "slots": 4}
    leaf0 = process_runner.leaf(world["repo"], models=["ctr@3", "eng@1"], name="leaf-0",
                                args=["--max-wait-ms", "0", "--max-message-bytes", str(LIMIT)])
    leaf1 = process_runner.leaf(world["repo"], models=["div@2"], name="leaf-1",
                                args=["--max-wait-ms", "0"])
    port = free_tcp_port()
    root = spawn_root(process_runner, world, {"leaf-0": leaf0.endpoint, "leaf-1": leaf1.endpoint},
                      metrics_port=port, deadline_ms=4000, shm=shm)
    return {"root": root, "leaf0": leaf0, "port": port}


def test_a_leaf_advertises_its_message_limit_in_its_pong(small_leaf):
    pong = ping(small_leaf["leaf0"].endpoint, timeout=5)
    assert pong is not None and pong["max_message_bytes"] == LIMIT, pong
    root_pong = ping(small_leaf["root"].endpoint, timeout=5)
    links = {link["leaf"]: link for link in root_pong["leaves"]}
    assert links["leaf-0"]["max_message_bytes"] == LIMIT, links


def test_a_message_over_the_leafs_limit_is_too_large_at_once_and_never_sent(world, small_leaf):
    root, port = small_leaf["root"], small_leaf["port"]
    with ScoringClient(root.endpoint) as client:
        t0 = time.monotonic()
        res = client.score(USER, BIG, models=MODELS, deadline_ms=4000)
        waited = time.monotonic() - t0
        assert res.ok, res.error
        assert set(res.errors) == {"eng@1"}, res.errors
        err = res.errors["eng@1"]
        assert err["kind"] == "too_large", err
        by_model = {r["model"]: r for r in res.results}
        assert "leaf" not in by_model["eng@1"] and "bytes_sent" not in by_model["eng@1"]
        nbytes = err["nbytes"]
        assert err["limit"] == LIMIT and nbytes > LIMIT and err["leaf"] == "leaf-0", err
        assert str(LIMIT) in err["message"] and str(nbytes) in err["message"], err
        # Answered, not timed out: generous, since a loaded box is slow to build 2048 rows.
        assert waited < 3.5, f"the client waited {waited:.1f} s: was the request sent?"
        assert_scores_match(world, res, USER, BIG, ["ctr@3", "div@2"])
        # The link stayed up: what fits is served by the same replica right after.
        small = client.score(USER, SMALL, models=MODELS, deadline_ms=4000)
        assert_scores_match(world, small, USER, SMALL, MODELS)
    assert metric(port, "trimmer_root_too_large_total", leaf="leaf-0", model="eng@1") == 1
    assert "eng@1" in root.log() and "too_large" in root.log(), root.log()



def incompressible(rows: int):
    """A ModelBatch of random bytes, which LZ4 makes a little larger."""
    from _trim import Batch, ColumnSpec, Layout, compile_plan
    from rootproc.leaves.encoding import ModelBatch
    layout = Layout([ColumnSpec("noise", "uint8", (64,))])
    noise = np.random.default_rng(0).integers(0, 256, size=(rows, 64), dtype=np.uint8)
    batch = Batch.from_arrays(layout, {"noise": noise}, rows)
    plan = compile_plan(layout, layout.names)
    return ModelBatch("m@1", plan, batch, 0)


@pytest.mark.parametrize("limit, compressed", [(None, True), (1 << 30, True), ("exact", False)])
def test_an_lz4_block_over_the_limit_goes_uncompressed(limit, compressed):
    from types import SimpleNamespace

    from _trim.transport.protocol import unpack_header
    from rootproc.leaves.encoding import Encoder
    model = incompressible(512)
    limit = model.nbytes if limit == "exact" else limit
    link = SimpleNamespace(compression="lz4", max_message_bytes=limit)
    msg = Encoder(model).message(link, "1", 512, 100)
    head = unpack_header(msg.frames[0])
    assert len(msg.frames[1]) <= (limit or float("inf"))
    if compressed:
        assert head["compression"] == "lz4" and head["raw_nbytes"] == model.nbytes
        assert msg.wire_nbytes > model.nbytes   # random bytes: LZ4 adds a little
    else:
        assert head["compression"] == "none" and "raw_nbytes" not in head
        assert msg.wire_nbytes == model.nbytes
