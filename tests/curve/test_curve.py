"""CURVE on tcp links, with real processes on 127.0.0.1: client -> root -> leaves.

leaf-0 serves ctr@3 and eng@1 on a CURVE tcp endpoint and a plain ipc one (the
same socket); leaf-1 serves div@2 on plain ipc.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from rootproc.client.health import ping
from rootproc.client.scoring_client import ScoringClient
from rootproc.settings import config_from_dict
from tests.root.world import CANDIDATE_IDS, MODELS, USER_IDS, assert_scores_match
from tests.support.procs import ping as plain_ping

from .conftest import trimmer

pytestmark = pytest.mark.slow


def wait_for(check, what: str, proc=None, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.returncode}:\n{proc.log()}")
        try:
            value = check()
        except (TimeoutError, zmq.ZMQError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not within {timeout}s" + (f":\n{proc.log()}" if proc else ""))


def models_ready(pong) -> bool:
    return bool(pong) and all(m.get("ready") for m in pong.get("models", []))


@pytest.fixture(scope="module")
def runner(module_process_runner):
    return module_process_runner


@pytest.fixture(scope="module")
def leaves(world, keys, runner):
    tcp, ipc0 = runner.endpoint("leaf-0", "tcp"), runner.endpoint("leaf-0")
    leaf0 = runner.leaf(world["repo"], models=["ctr@3", "eng@1"], name="leaf-0", bind=tcp,
                        ready=False, args=["--bind", ipc0, "--max-wait-ms", "0",
                                           "--curve-secret-key", keys["leaf"]["secret"],
                                           "--curve-authorized", keys["leaf_authorized"]])
    leaf0.ipc_paths.append(ipc0[len("ipc://"):])
    leaf1 = runner.leaf(world["repo"], models=["div@2"], name="leaf-1", ready=False,
                        args=["--max-wait-ms", "0"])
    wait_for(lambda: models_ready(ping(tcp, 500, curve_server_public_key=keys["leaf"]["public"],
                                       curve_client_secret_key=keys["root"]["secret"])),
             "leaf-0 over CURVE", leaf0)
    leaf1.wait_ready()
    yield {"leaf-0": tcp, "leaf-0-ipc": ipc0, "leaf-1": leaf1.endpoint, "procs": (leaf0, leaf1)}
    assert leaf0.stop() == 0, leaf0.log()


def spawn_root(runner, world, name: str, bind: str, leaves_cfg: list, **extra):
    cfg = {"name": name, "bind": [bind], "schema": world["schema"], "bundle": world["bundle"],
           "feature_store": world["store"], "leaves": leaves_cfg, "deadline_ms": 1000,
           "metrics_port": None, "ping_interval_ms": 100, "health_timeout_ms": 1000, **extra}
    path = os.path.join(runner.tmp_path, f"{name}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    ipc = [bind[len("ipc://"):]] if bind.startswith("ipc://") else []
    return runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=ipc)


@pytest.fixture(scope="module")
def secure_root(world, keys, leaves, runner):
    """CURVE to leaf-0 and for its own tcp bind (clients in the authorized directory)."""
    bind = runner.endpoint("root-secure", "tcp")
    proc = spawn_root(runner, world, "root-secure", bind, [
        {"name": "leaf-0", "endpoints": [leaves["leaf-0"]], "models": ["ctr@3", "eng@1"],
         "curve": {"server_public_key": keys["leaf"]["public"]}},
        {"name": "leaf-1", "endpoints": [leaves["leaf-1"]], "models": ["div@2"]}],
        curve={"secret_key": keys["root"]["secret"], "authorized": keys["root_authorized"]})

    def healthy():
        pong = ping(bind, 500, curve_server_public_key=keys["root"]["public"],
                    curve_client_secret_key=keys["client"]["secret"])
        return pong if all(link["healthy"] for link in pong["leaves"]) else None
    wait_for(healthy, "root-secure with healthy leaves", proc, timeout=30)
    yield proc
    assert proc.stop() == 0, proc.log()  # a clean drain closes the CURVE machinery too


def client(endpoint, keys, who: str | None = "client", **kw) -> ScoringClient:
    if who is None:
        return ScoringClient(endpoint, ctx=zmq.Context.instance(), **kw)
    return ScoringClient(endpoint, curve_server_public_key=keys["root"]["public"],
                         curve_client_secret_key=keys[who]["secret"], **kw)




def test_curve_links_score_correctly(world, keys, leaves, secure_root):
    rng = np.random.default_rng(3)
    with client(secure_root.endpoint, keys) as c:
        for _ in range(3):
            user, cands = int(rng.choice(USER_IDS)), rng.choice(CANDIDATE_IDS, 30, replace=False)
            res = c.score(user, cands, models=list(MODELS), deadline_ms=5000)
            assert_scores_match(world, res, user, cands, MODELS)
            assert {r["model"]: r["leaf"] for r in res.results}["ctr@3"] == "leaf-0"
        pong = c.ping()
    link = next(link for link in pong["leaves"] if link["leaf"] == "leaf-0")
    assert link["curve"] is True and link["handshake_error"] is None
    # The leaf's ipc endpoint on the same socket stays plain; its tcp one does not.
    assert models_ready(plain_ping(leaves["leaf-0-ipc"], timeout=2))
    assert plain_ping(leaves["leaf-0"], timeout=0.5) is None
    out = trimmer("health", secure_root.endpoint, "--require-leaves",
                  "--curve-server-public-key", keys["root"]["public"],
                  "--curve-client-secret-key", keys["client"]["secret"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "root-secure"


def test_clients_without_an_authorized_key_get_no_service(world, keys, secure_root):
    intruder_public = zmq.auth.load_certificate(keys["intruder"]["public"])[0].decode()
    with client(secure_root.endpoint, keys, who=None) as plain:
        # Which side notices first varies: a mechanism mismatch, or a closed handshake.
        with pytest.raises(TimeoutError, match="handshake failed: .*(mechanism mismatch|requires CURVE)"):
            plain.score(100, CANDIDATE_IDS[:5], timeout_ms=1500)
    with client(secure_root.endpoint, keys, who="intruder") as intruder:
        with pytest.raises(TimeoutError, match="rejected this process's CURVE key"):
            intruder.score(100, CANDIDATE_IDS[:5], timeout_ms=1500)
    out = trimmer("health", secure_root.endpoint, "--timeout-ms", "500")
    assert out.returncode == 1 and "handshake failed" in out.stderr, out.stderr
    wait_for(lambda: intruder_public in secure_root.log(20000)
             and "without CURVE" in secure_root.log(20000), "the root's log of both rejections")
    with client(secure_root.endpoint, keys) as c:  # still serving the right clients
        assert c.score(100, CANDIDATE_IDS[:5], models=["div@2"], deadline_ms=5000).ok


def test_root_with_wrong_leaf_keys_gets_errors_and_keeps_serving(world, keys, leaves, runner):
    bind = runner.endpoint("root-bad")
    proc = spawn_root(runner, world, "root-bad", bind, [
        # The leaf does not trust this client key...
        {"name": "leaf-0", "endpoints": [leaves["leaf-0"]], "models": ["ctr@3"],
         "curve": {"server_public_key": keys["leaf"]["public"],
                   "client_secret_key": keys["intruder"]["secret"]}},
        # ...and this is not the leaf's public key.
        {"name": "leaf-0-wrong-server", "endpoints": [leaves["leaf-0"]], "models": ["eng@1"],
         "curve": {"server_public_key": keys["root"]["public"],
                   "client_secret_key": keys["root"]["secret"]}},
        {"name": "leaf-1", "endpoints": [leaves["leaf-1"]], "models": ["div@2"]}])

    def leaf1_healthy():
        pong = plain_ping(bind, timeout=0.5)
        return pong and any(link["leaf"] == "leaf-1" and link["healthy"] for link in pong["leaves"])
    wait_for(leaf1_healthy, "root-bad with leaf-1 healthy", proc, timeout=30)
    with ScoringClient(bind) as c:
        t0 = time.monotonic()
        res = c.score(101, CANDIDATE_IDS[:20], models=["ctr@3", "eng@1", "div@2"],
                      deadline_ms=1000, timeout_ms=5000)
        assert time.monotonic() - t0 < 3
        assert res.ok and set(res.errors) == {"ctr@3", "eng@1"}, res.errors
        assert all(e["kind"] in ("unavailable", "deadline") for e in res.errors.values())
        assert_scores_match(world, res, 101, CANDIDATE_IDS[:20], ["div@2"])

        def problems():  # the root reads its links' monitors at each ping tick
            p = {link["leaf"]: link["handshake_error"] for link in c.ping()["leaves"] if link.get("curve")}
            return p if all(p.values()) else None
        p = wait_for(problems, "handshake errors in the root's pong", proc, timeout=10)
    assert "rejected this process's CURVE key" in p["leaf-0"]
    assert "probably not the server's" in p["leaf-0-wrong-server"]
    leaf_log = leaves["procs"][0]
    intruder_public = zmq.auth.load_certificate(keys["intruder"]["public"])[0].decode()
    wait_for(lambda: intruder_public in leaf_log.log(20000)
             and "wrong server public key" in leaf_log.log(20000), "the leaf's log of both")
    assert "leaf leaf-0 (" in proc.log(20000) and "ZAP status 400" in proc.log(20000)

    # Trusting the key on the leaf (no restart) lets the root's next retry in.
    shutil.copy(keys["intruder"]["public"], keys["leaf_authorized"])
    try:
        with ScoringClient(bind) as c:
            wait_for(lambda: not c.score(101, CANDIDATE_IDS[:20], models=["ctr@3"],
                                         deadline_ms=1000, timeout_ms=3000).errors,
                     "ctr@3 after authorizing the key", proc, timeout=15)
    finally:
        os.unlink(os.path.join(keys["leaf_authorized"], "intruder.key"))
    assert proc.stop() == 0, proc.log()


def test_keys_cli_writes_safe_files(tmp_path):
    out = trimmer("keys", "generate", str(tmp_path / "sub" / "node"))
    assert out.returncode == 0, out.stderr
    secret, public = tmp_path / "sub" / "node.key_secret", tmp_path / "sub" / "node.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert "secret-key" not in public.read_text() and "secret-key" in secret.read_text()
    shown = trimmer("keys", "public", str(public))
    assert shown.returncode == 0 and shown.stdout.strip() == zmq.auth.load_certificate(secret)[0].decode()
    again = trimmer("keys", "generate", str(tmp_path / "sub" / "node"))
    assert again.returncode == 1 and "already exist" in again.stderr


def test_curve_config_is_checked_and_key_files_read_at_start(world, tmp_path, runner):
    base = {"schema": "s.json", "feature_store": "st", "bundle": "b.json"}
    leaf = {"name": "gpu", "endpoints": ["tcp://h:1"], "curve": {"server_public_key": "gpu.key"}}
    with pytest.raises(ValueError, match="client_secret_key"):
        config_from_dict({**base, "leaves": [leaf]}, "/etc/t").validate()
    cfg = config_from_dict({**base, "leaves": [leaf], "curve": {"secret_key": "k/root.key_secret"}},
                           "/etc/t").validate()
    assert cfg.leaves[0].curve.server_public_key == "/etc/t/gpu.key"
    assert cfg.leaves[0].curve.client_secret_key == "/etc/t/k/root.key_secret"
    ipc_leaf = {**leaf, "endpoints": ["ipc:///x"]}
    with pytest.raises(ValueError, match="tcp"):
        config_from_dict({**base, "leaves": [ipc_leaf], "curve": {"secret_key": "r"}}).validate()
    with pytest.raises(ValueError, match="curve.secret_key"):
        config_from_dict({**base, "leaves": [], "curve": {"authorized": "*"}}).validate()
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_dict({**base, "leaves": [], "curve": {"secret": "x"}})
    # A missing key file stops the root at start, naming the file.
    missing = str(tmp_path / "nope.key")
    proc = spawn_root(runner, world, "root-nokey", runner.endpoint("root-nokey"), [
        {"name": "gpu", "endpoints": ["tcp://127.0.0.1:1"],
         "curve": {"server_public_key": missing, "client_secret_key": missing}}])
    assert proc.wait(30) == 2 and "nope.key" in proc.log()


def test_deploy_configs_name_curve_keys_for_the_remote_link(tmp_path):
    from leafproc.__main__ import parse_args
    from rootproc.settings import load_config

    deploy = os.path.join(os.path.dirname(__file__), "..", "..", "deploy")
    cfg = load_config(os.path.join(deploy, "root.json")).validate()
    gpu = next(leaf for leaf in cfg.leaves if leaf.name == "gpu-a")
    assert gpu.curve.server_public_key == "/etc/trimmer/keys/gpu-a.key"
    assert gpu.curve.client_secret_key == cfg.curve.secret_key
    args = parse_args(["--config", os.path.join(deploy, "leaf-remote.json")])
    assert args.bind == ("tcp://0.0.0.0:5560",) and args.curve.secret_key.endswith(".key_secret")
    assert args.curve.authorized == "/etc/trimmer/keys/roots"
