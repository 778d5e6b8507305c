"""A fleet on three hosts coordinated through ZooKeeper, scoring all along.

Host A (the default network namespace) runs ZooKeeper, a canary root and a
production root; hosts B and C (namespaces of their own, rootproc/demo/netns.py)
each run a leaf per stage, ``leaf-b`` and ``leaf-c``, both hosting the same
versions. No config names an endpoint: the roots find the leaves in the
stage's membership. While both roots score continuously:

(a) a new bundle and model version go out (deploy, gated deploy-models,
    promote canary -> production): no request fails;
(b) host C's link is cut: only requests in flight to C's leaves may fail,
    and C's leaves leave the roots' rotation within the session timeout (their
    nodes vanish); with the link back they register again and are routed to;
(c) the ZooKeeper server is killed and restarted: no request fails, and
    roots and leaves reconnect (a deploy made afterwards reaches them).
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from rootproc.demo.netns import RemoteHost, unavailable_reason
from tests.netns.test_remote_leaf import leftovers
from tests.rollout.conftest import Load, check_replies, serving, wait_for
from tests.support.procs import ping
from tests.support.zookeeper import ZooKeeperServer, require_zookeeper

from .conftest import SESSION_S, leaf_argv, linked, routes, seed, spawn_root
from .test_discovery import save
from .test_zk_store import trimmer

REASON = unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.slow,
              pytest.mark.skipif(REASON is not None, reason=f"{REASON or ''}")]
STAGES = ("canary", "production")
PORTS = {"canary": 5561, "production": 5562}


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def wait_leaf(endpoint: str, log_path, keys=("ctr@3", "eng@1"), timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pong = ping(endpoint, timeout=0.5)
        if pong is not None and serving(*keys)(pong):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{endpoint} not ready:\n{open(log_path).read()[-3000:]}")


def test_fleet_across_three_hosts(world, fleet_bundles, process_runner, tmp_path):
    require_zookeeper()
    f1, f2 = fleet_bundles
    hosts = {"leaf-b": RemoteHost(None), "leaf-c": RemoteHost(None)}
    zk = None
    pids = [os.getpid()]
    loads: dict = {}
    try:
        for host in hosts.values():
            host.up()
            # Reach host A's addresses (ZooKeeper listens on one) through the veth pair.
            ip("-n", host.name, "route", "add", "default", "via", host.host_address)
        zk = ZooKeeperServer(tmp_path / "zk", host=hosts["leaf-b"].host_address).start()
        address = zk.address("fleet")
        seed(address, f1, STAGES)
        leaves: dict = {}
        for group, host in hosts.items():
            for stage in STAGES:
                endpoint = host.endpoint(PORTS[stage])
                log_path = tmp_path / f"{group}-{stage}.log"
                argv = leaf_argv(world, group, address, stage, endpoint) + ["--insecure"]
                pids.append(host.spawn(argv, log_path).pid)   # plain tcp, test hosts only
                leaves[(group, stage)] = (endpoint, log_path)
        for endpoint, log_path in leaves.values():
            wait_leaf(endpoint, log_path)
        roots = {stage: spawn_root(process_runner, world, address, stage, f"root-{stage}")
                 for stage in STAGES}
        for stage, root in roots.items():
            pids.append(root.pid)
            eps = [leaves[(g, stage)][0] for g in hosts]
            root.wait_ready(30, ready=lambda p, eps=eps: routes(p, eps))
        loads = {stage: Load(root.endpoint, in_flight=2) for stage, root in roots.items()}
        for load in loads.values():
            load.start()
        wait_for("traffic", lambda: all(load.count() >= 20 for load in loads.values()))

        # (a) A new bundle and version, canary first, then promoted.
        t_a = time.monotonic()
        assert trimmer("deploy", str(save(f2, tmp_path)), "--stage", "canary",
                       "--config-store", address).returncode == 0
        out = trimmer("deploy-models", "ctr@5", "--stage", "canary", "--wait", "30",
                      "--config-store", address)
        assert out.returncode == 0, out
        for g in hosts:
            wait_leaf(*leaves[(g, "canary")], ("ctr@5",))
        out = trimmer("promote", "canary", "production", "--config-store", address)
        assert out.returncode == 0, out
        for g in hosts:
            wait_leaf(*leaves[(g, "production")], ("ctr@5",))
        wait_for("production scoring ctr@5", lambda: any(
            r["model"] == "ctr@5" for t, _, res in loads["production"].replies if t > t_a
            for r in res.results), timeout=20)
        t_b = time.monotonic()
        failures_a = failed_between(loads, t_a, t_b)

        # (b) Host C cut off: its leaves' connections hang, their sessions expire.
        ip("link", "set", hosts["leaf-c"].veth_host, "down")
        c_eps = {leaves[("leaf-c", s)][0] for s in STAGES}
        wait_for("host C's leaves out of rotation", lambda: all(
            not c_eps & linked(root.endpoint) for root in roots.values()), timeout=SESSION_S + 10)
        out_after = time.monotonic() - t_b
        print(f"\nhost C out of every root's rotation {out_after:.2f} s after the cut "
              f"(session timeout {SESSION_S} s)")
        assert out_after < SESSION_S + 2.0
        before = {s: load.count() for s, load in loads.items()}
        wait_for("traffic on host B alone", lambda: all(
            load.count() >= before[s] + 20 for s, load in loads.items()))
        ip("link", "set", hosts["leaf-c"].veth_host, "up")
        for stage, root in roots.items():
            wait_for(f"host C back on {stage}", lambda root=root, stage=stage: routes(
                ping(root.endpoint, 2.0), [leaves[("leaf-c", stage)][0]]), timeout=30)
        # The requests that hung on C are answered at their deadline.
        time.sleep(5.5)
        t_c = time.monotonic()
        failures_b = failed_between(loads, t_b, t_c)

        # (c) ZooKeeper killed and restarted: serving goes on; all reconnect.
        zk.kill()
        before = {s: load.count() for s, load in loads.items()}
        wait_for("traffic without ZooKeeper", lambda: all(
            load.count() >= before[s] + 20 for s, load in loads.items()))
        zk.start()
        out = trimmer("rollback", "canary", "--config-store", address)
        assert out.returncode == 0, out
        wait_for("the canary root on the rollback", lambda: ping(
            roots["canary"].endpoint, 2.0)["config"] == f1.id, timeout=20)
        before = {s: load.count() for s, load in loads.items()}
        wait_for("traffic after", lambda: all(
            load.count() >= before[s] + 20 for s, load in loads.items()))
        # After ZooKeeper's restart each member registers again once its session
        # is back: every leaf on both stages, within a while.
        def every_member_back():
            out = trimmer("status", "--config-store", address)
            assert out.returncode == 0, out
            return all(out.stdout.count(f"leaf {g}:") == 2 for g in hosts)   # one per stage
        wait_for("every leaf registered on both stages", every_member_back, timeout=30)
    finally:
        for load in loads.values():
            load.stop()
        process_runner.close()
        for host in hosts.values():
            host.down()
        if zk is not None:
            zk.stop()
    failures_c = failed_between(loads, t_c, float("inf"))
    for stage, load in loads.items():
        load.tally(f"{stage}: deploy + promote, host C cut, ZooKeeper restarted")
        assert load.lost == 0
    print(f"failed requests: (a) {len(failures_a)}, (b) {len(failures_b)}, (c) {len(failures_c)}")
    assert not failures_a and not failures_c, (failures_a + failures_c)[:3]
    for res in failures_b:   # only what was in flight to host C
        assert {r.get("leaf") for r in res.results if r.get("error")} == {"leaf-c"}, res.errors
    for load in loads.values():
        load.replies = [x for x in load.replies if x[2].ok and not x[2].errors]
        check_replies(world, load)
    assert not leftovers(*pids)


def failed_between(loads: dict, t0: float, t1: float) -> list:
    return [res for load in loads.values() for t, _, res in load.replies
            if t0 <= t < t1 and (not res.ok or res.errors)]
