"""A real root and leaf following a ZooKeeper stage while someone writes a
bundle node by hand that claims 300,000 chunks, or inflates to 512 MiB, and
deploys it (issue 25), under continuous load: every request answered, none
failed or lost, the last good config kept, the refusal logged by both and
reported by `trimmer status`, RSS within a bound of before; then a real
deploy repairs it."""
from __future__ import annotations

import json

import pytest

from signatures.configstore import Stages, open_config_store
from tests.fleet.test_zk_hostile import bomb, status
from tests.rollout.conftest import Load, check_replies, wait_for
from tests.support.procs import ping

from .conftest import routes, seed, spawn_root
from .test_discovery import spawn_leaf

pytestmark = pytest.mark.slow
RSS_SLACK_MB = 80    # the inflate limit (64 MiB) and a step


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("hostile", ["chunks", "inflates"])
def test_a_hostile_bundle_node_under_load(world, fleet_bundles, process_runner, zk_server,
                                          hostile, capsys):
    address = zk_server.address()
    f1, f2 = fleet_bundles
    seed(address, f1)
    leaf = spawn_leaf(process_runner, world, address, "leaf-b")
    root = spawn_root(process_runner, world, address, "production")
    root.wait_ready(30, ready=lambda p: routes(p, [leaf.endpoint]))
    load = Load(root.endpoint)
    load.start()
    try:
        wait_for("traffic", lambda: load.count() >= 20)
        before = {"root": rss_mb(root.pid), "leaf": rss_mb(leaf.pid)}
        data = (b"C" + json.dumps({"chunks": 300_000, "sha256": "0" * 64, "bytes": 100}).encode()
                if hostile == "chunks" else b"Z" + bomb())
        says = "chunks, over the limit" if hostile == "chunks" else "inflates past"
        with open_config_store(address) as writer:
            writer.zk.client().create(writer.zk.path("bundles", f2.id), data, makepath=True)
            Stages(writer).deploy(f2, "production", force=True)   # names the node
            wait_for("the root and the leaf refusing it",
                     lambda: says in root.log(100_000) and says in leaf.log(100_000), timeout=20)
            code, out, err, _ = status(address)
            assert code == 1 and says in err, (code, out, err)
            count = load.count()
            wait_for("traffic after it", lambda: load.count() >= count + 20)
            after = {"root": rss_mb(root.pid), "leaf": rss_mb(leaf.pid)}
            assert ping(root.endpoint, 2.0)["config"] == f1.id    # the last good config
            # Repaired by a real deploy of a good bundle: generation 3.
            gen = Stages(writer).deploy(f1, "production", force=True)
            wait_for("the repair installed",
                     lambda: (ping(root.endpoint, 2.0) or {}).get("generation") == gen
                     or f"generation {gen}" in root.log(100_000), timeout=20)
        count = load.count()
        wait_for("traffic after the repair", lambda: load.count() >= count + 20)
    finally:
        load.stop()
    figures = load.tally(f"hostile bundle node ({hostile}) under load")
    with capsys.disabled():
        print(f"\n{hostile} under load: {figures}; RSS MB before {before}, after {after}")
    assert figures["failed"] == 0 and figures["lost"] == 0
    for who in before:
        assert after[who] < before[who] + RSS_SLACK_MB, (who, before, after)
    check_replies(world, load, live=("ctr@3", "eng@1"))
    assert "Traceback" not in root.log(100_000) and "Traceback" not in leaf.log(100_000)
