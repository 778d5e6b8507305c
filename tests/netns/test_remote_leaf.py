"""A remote leaf on this machine: a root in the default network namespace
scores through leaves in their own namespace, behind a shaped veth link
(rootproc/demo/netns.py), and everything made for it goes away afterwards."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rootproc.client.scoring_client import ScoringClient
from rootproc.demo.netns import RemoteHost, cleanup_stale, namespaces, owner_pid, unavailable_reason, veths
from tests.root.world import MODELS, build_world, root_config, write_root_config
from tests.support.models import direct_scores
from tests.support.procs import ProcessRunner, all_models_ready, ping, processes_mentioning

REASON = unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=f"{REASON or ''}")]


def leftovers(*pids: int) -> list[str]:
    """Namespaces and veths made by ``pids`` (default: this process), and
    shared-memory segments named for them. Other sessions may be running
    their own tests on this machine: only what ours made counts."""
    pids = set(pids or [os.getpid()])
    shm = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return ([n for n in namespaces() + veths() if owner_pid(n) in pids]
            + [e for e in shm if (m := re.match(r"trimmer-(\d+)-", e)) and int(m.group(1)) in pids])


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True).stdout


def test_up_shapes_both_ends_and_down_removes_everything():
    host = RemoteHost("200mbit")
    try:
        host.up()
        assert host.name in namespaces() and host.veth_host in veths()
        assert f"inet {host.host_address}/30" in ip("-o", "-4", "addr", "show", "dev", host.veth_host)
        assert f"inet {host.address}/30" in ip("-n", host.name, "-o", "-4", "addr", "show")
        qdiscs = host.qdiscs()
        assert qdiscs.count("tbf") == 2 and qdiscs.count("rate 200Mbit") == 2, qdiscs
    finally:
        host.down()
    host.down()  # idempotent
    assert not leftovers()


def test_delay_is_netem_or_a_clear_error_and_nothing_left():
    host = RemoteHost("1gbit", delay_ms=2)
    try:
        host.up()
    except RuntimeError as exc:  # kernels built without sch_netem
        assert "netem" in str(exc)
    else:
        assert "delay 2ms" in host.qdiscs()
    finally:
        host.down()
    assert not leftovers()


def test_bad_rate_is_refused_before_anything_is_made():
    with pytest.raises(ValueError, match="bandwidth 'fast'"):
        RemoteHost("fast")


def test_cleanup_removes_what_a_killed_run_left():
    code = ("import sys, time; from rootproc.demo.netns import RemoteHost; "
            "h = RemoteHost(None).up(); h.spawn(['sleep', '60'], '/dev/null'); "
            "print(h.name, h.veth_host, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name, veth = child.stdout.readline().split()
        assert name in namespaces() and veth in veths()
    finally:
        child.kill()  # a crash: no teardown runs
        child.wait(10)
        child.stdout.close()
        removed = cleanup_stale()
    assert name in removed  # its veth pair went with it
    assert veth not in veths()
    assert not leftovers(child.pid)
    assert not processes_mentioning(name)


@pytest.mark.slow
def test_root_scores_through_leaves_in_a_namespace(tmp_path):
    (tmp_path / "world").mkdir()
    world = build_world(tmp_path / "world")
    pids = [os.getpid()]
    runner = ProcessRunner(tmp_path)
    placement = {"leaf-0": ["ctr@3", "eng@1"], "leaf-1": ["div@2"]}
    try:
        with RemoteHost("1gbit") as host:
            endpoints = {}
            for i, (leaf, models) in enumerate(placement.items()):
                endpoints[leaf] = host.endpoint(5555 + i)
                argv = [sys.executable, "-m", "leafproc", "--repo", world["repo"], "--name", leaf,
                        "--bind", endpoints[leaf], "--threads", "1", "--max-wait-ms", "0",
                        "--insecure"]   # plain tcp, in a namespace only this host reaches
                for key in models:
                    argv += ["--model", key]
                pids.append(host.spawn(argv, tmp_path / f"{leaf}.log").pid)
            for leaf, endpoint in endpoints.items():
                wait_ready(endpoint, all_models_ready, tmp_path / f"{leaf}.log")
            bind = runner.endpoint("root")
            cfg = write_root_config(tmp_path / "root.json", root_config(world, endpoints, bind))
            root = runner.spawn("root", [sys.executable, "-m", "rootproc", "--config", cfg],
                                endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
            pids.append(root.pid)
            root.wait_ready(30, ready=lambda pong: bool(pong.get("leaves"))
                            and all(link["healthy"] for link in pong["leaves"]))
            with ScoringClient(bind) as client:
                for seed in range(3):
                    check_request(world, client, seed)
            runner.close()
    finally:
        runner.close()
    assert not leftovers(*pids)
    assert not processes_mentioning(str(tmp_path))


def wait_ready(endpoint: str, ready, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pong = ping(endpoint, timeout=0.5)
        if pong is not None and ready(pong):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{endpoint} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def check_request(world, client, seed: int) -> None:
    import numpy as np

    from tests.root.world import CANDIDATE_IDS, USER_IDS, expected_features

    rng = np.random.default_rng(seed)
    user, cands = int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, size=40, replace=False)
    res = client.score(user, cands)
    assert res.ok and not res.errors, (res.error, res.errors)
    assert sorted(res.scores) == sorted(MODELS)
    feats = expected_features(world["users"], world["cands"], user, cands)
    for key, inputs in ((k, world["inputs"][k]) for k in MODELS):
        want = direct_scores(world["model_paths"][key], inputs, {s.name: feats[s.name] for s in inputs},
                             len(cands))
        np.testing.assert_allclose(res.scores[key], want, rtol=1e-5, atol=1e-4, err_msg=key)
    assert all(r["trimmed"] for r in res.results)
