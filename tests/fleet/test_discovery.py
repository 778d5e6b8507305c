"""Roots find their leaves in ZooKeeper's membership: no endpoint in any
config. A leaf that registers is linked and routed to after its first pong;
one that dies leaves rotation within the session timeout, one that stops
at once; deploy-models waits for the roots; all under continuous load."""
from __future__ import annotations

import signal
import time

import pytest

from signatures.configstore import open_config_store
from tests.rollout.conftest import Load, check_replies, serving, wait_for
from tests.support.procs import ping

from .conftest import SESSION_S, leaf_argv, linked, routes, seed, spawn_root
from .test_zk_store import trimmer

pytestmark = pytest.mark.slow


def spawn_leaf(runner, world, address, name, stage="production"):
    bind = runner.endpoint(name, "tcp")
    leaf = runner.spawn(f"{name}-{bind.rsplit(':', 1)[1]}",
                        leaf_argv(world, name, address, stage, bind), endpoint=bind)
    leaf.wait_ready(60, ready=serving("ctr@3", "eng@1"))
    return leaf


def test_roots_route_to_the_leaves_registered_for_their_config(world, fleet_bundles,
                                                               process_runner, zk_server,
                                                               tmp_path):
    address = zk_server.address()
    f1, f2 = fleet_bundles
    seed(address, f1)
    leaf_b = spawn_leaf(process_runner, world, address, "leaf-b")
    leaf_c = spawn_leaf(process_runner, world, address, "leaf-c")
    root = spawn_root(process_runner, world, address, "production")
    root.wait_ready(30, ready=lambda p: routes(p, [leaf_b.endpoint, leaf_c.endpoint]))
    load = Load(root.endpoint)
    load.start()
    try:
        wait_for("traffic", lambda: load.count() >= 20)
        served = {r["leaf"] for _, _, res in load.replies for r in res.results}
        assert served == {"leaf-b", "leaf-c"}, served

        # A leaf killed outright: out of rotation at once (its connection
        # drops), its link retired once its node goes, within the session timeout.
        leaf_c.signal(signal.SIGKILL)
        t_kill = time.monotonic()
        # The bound leaves room for a loaded machine (ZooKeeper expires
        # sessions on its own ticks); the figure is printed to compare.
        wait_for("leaf-c's link retired", lambda: leaf_c.endpoint not in linked(root.endpoint),
                 timeout=SESSION_S + 8)
        print(f"\nkilled leaf left the fleet after {time.monotonic() - t_kill:.2f} s "
              f"(session timeout {SESSION_S} s)")
        # A new process registers: linked, and routed once it has ponged.
        leaf_c2 = spawn_leaf(process_runner, world, address, "leaf-c")
        wait_for("the new leaf-c routed", lambda: routes(ping(root.endpoint, 2.0),
                                                         [leaf_c2.endpoint]), timeout=20)
        t_back = time.monotonic()
        wait_for("traffic on the new leaf-c", lambda: any(
            r["leaf"] == "leaf-c" for t, _, res in load.replies if t > t_back
            for r in res.results), timeout=10)

        # Config before models, fleet-wide: deploy-models waits for the root.
        out = trimmer("deploy", str(save(f2, tmp_path)), "--stage", "production",
                      "--config-store", address)
        assert out.returncode == 0, out
        t_models = time.monotonic()
        out = trimmer("deploy-models", "ctr@5", "--stage", "production", "--wait", "30",
                      "--config-store", address)
        assert out.returncode == 0, out
        assert ping(root.endpoint, 2.0)["config"] == f2.id   # installed before it returned

        # A leaf stopped cleanly: drained, and its node gone by the time it
        # has exited (it closes its session; no waiting out the timeout).
        with open_config_store(address) as store:
            assert "leaf-b" in [m.name for m in store.members("production")]
            leaf_b.signal(signal.SIGTERM)
            assert leaf_b.wait(30) == 0
            registered = [m.name for m in store.members("production")]
        assert "leaf-b" not in registered, registered
        wait_for("leaf-b's link retired", lambda: leaf_b.endpoint not in linked(root.endpoint),
                 timeout=SESSION_S + 8)
        before = load.count()
        wait_for("traffic without leaf-b", lambda: load.count() >= before + 20)
    finally:
        load.stop()
    figures = load.tally("leaves registering, killed, restarted, stopped")
    failed = load.failures()
    # Only what was in flight to the killed process may fail.
    assert all(set(r.errors) and all(r2.get("leaf") == "leaf-c" for r2 in r.results
                                     if r2.get("error")) for r in failed), \
        [(r.error, r.errors) for r in failed[:3]]
    assert figures["failed"] <= load.in_flight and load.lost == 0
    load.replies = [x for x in load.replies if x[2].ok and not x[2].errors]
    # ctr@5 is live once deploy-models has run, and never before.
    early = [r for t, _, res in load.replies if t < t_models
             for r in res.results if r["model"] == "ctr@5"]
    assert not early, early[:3]
    check_replies(world, load, live=("ctr@3", "ctr@5", "eng@1"))


def save(bundle, tmp_path):
    path = tmp_path / f"{bundle.id}.json"
    bundle.save(path)
    return path


def test_a_leaf_with_curve_is_reached_over_curve_with_the_key_it_publishes(
        world, fleet_bundles, process_runner, zk_server, tmp_path):
    """The leaf's member node carries its public key; the root connects to
    the endpoints it finds with CURVE, as its own key pair, which the leaf
    authorizes."""
    import os
    import sys

    from _trim.transport.curve import generate
    from rootproc.client.scoring_client import ScoringClient
    from tests.root.world import CANDIDATE_IDS, USER_IDS

    from .conftest import root_file
    keys = tmp_path / "keys"
    (keys / "roots").mkdir(parents=True)
    generate(keys / "leaf-b")
    root_pub, root_secret = generate(keys / "root")
    os.rename(root_pub, keys / "roots" / "root.key")
    address = zk_server.address()
    seed(address, fleet_bundles[0])
    bind = process_runner.endpoint("leaf-b", "tcp")
    argv = leaf_argv(world, "leaf-b", address, "production", bind) + [
        "--curve-secret-key", str(keys / "leaf-b.key_secret"),
        "--curve-authorized", str(keys / "roots")]
    leaf = process_runner.spawn("leaf-b", argv, endpoint=None)
    with open_config_store(address) as store:
        wait_for("leaf-b registered with its key", lambda: any(
            m.curve_key for m in store.members("production")), timeout=60)
    name = "root-curve"
    rbind = process_runner.endpoint(name)
    path = root_file(world, os.path.join(process_runner.tmp_path, f"{name}.json"), name, address,
                     "production", rbind, curve={"secret_key": str(root_secret)})
    root = process_runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                                endpoint=rbind, ipc_paths=[rbind[len("ipc://"):]])
    pong = root.wait_ready(60, ready=lambda p: routes(p, [bind]))
    (link,) = pong["leaves"]
    assert link["curve"] is True and link["handshake_error"] is None
    with ScoringClient(rbind) as client:
        res = client.score(int(USER_IDS[0]), CANDIDATE_IDS[:16], models=["ctr@3", "eng@1"])
    assert res.ok and not res.errors, (res.error, res.errors)
    assert leaf.returncode is None
