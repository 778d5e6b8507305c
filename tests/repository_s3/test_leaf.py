"""Real leaves loading their models from the S3-API server, scored through a
real root under continuous load: a new version whose object was replaced
with other bytes, the store down, downloads cut halfway. The loaded versions
keep scoring throughout; the new one is refused (named in the log and the
metrics), tried again, and served once the store delivers it whole."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from signatures.configstore import Stages
from tests.rollout.conftest import (
    Load,
    check_replies,
    scrape,
    seed_store,
    serving,
    spawn_root,
    wait_for,
)
from tests.support.procs import free_tcp_port, ping
from tests.support.s3 import CappedProxy

from .conftest import spawn_s3_leaf, upload

pytestmark = pytest.mark.slow


def repo_errors(port: int, key: str, kind: str) -> float:
    return scrape(port).get(("trimmer_leaf_repository_errors_total",
                             frozenset({"model": key, "kind": kind}.items())), 0.0)


def leaf_state(leaf, key: str) -> dict:
    pong = ping(leaf.endpoint, timeout=2.0) or {}
    return next((m for m in pong.get("models", []) if m["model"] == key), {})


def start(world, runner, tmp_path, url: str, env=None):
    """The canary stage on b1 (ctr@3, eng@1), a leaf reading ``url``, a root, load."""
    store_path = str(tmp_path / "configs")
    stages = Stages(seed_store(world, store_path, stages=("canary",)))
    port = free_tcp_port()
    leaf = spawn_s3_leaf(runner, url, store_path, "canary", cache=str(tmp_path / "cache"),
                         env=env, args=["--metrics-port", str(port)])
    leaf.metrics_port = port
    leaf.wait_ready(60, ready=serving("ctr@3", "eng@1"))
    root = spawn_root(runner, world, store_path, "canary", leaf.endpoint)
    load = Load(root.endpoint)
    load.start()
    wait_for("traffic", lambda: load.count() >= 10)
    return stages, leaf, load


def recent_versions(load: Load, n: int = 10) -> set:
    start = load.count()
    wait_for(f"{n} more replies", lambda: load.count() >= start + n)
    return {r["model"] for _, _, res in load.replies[start:] for r in res.results}


def test_a_replaced_object_is_refused_until_the_store_holds_the_exported_bytes(
        world, s3, bucket, process_runner, tmp_path):
    url = f"s3://{bucket}/repo"
    upload(world["repo"], url)
    exported = s3.client().get_object(Bucket=bucket, Key="repo/ctr/5/model.pt")["Body"].read()
    s3.client().put_object(Bucket=bucket, Key="repo/ctr/5/model.pt", Body=exported[::-1])
    stages, leaf, load = start(world, process_runner, tmp_path, url)
    try:
        stages.deploy(world["b2"], "canary")
        stages.deploy_models("canary", ["ctr@5"], wait_s=30)
        wait_for("ctr@5 refused", lambda: repo_errors(leaf.metrics_port, "ctr@5",
                                                      "hash_mismatch") >= 2, timeout=60)
        state = leaf_state(leaf, "ctr@5")
        assert state.get("state") == "failed" and "hash_mismatch" in state["error"], state
        assert "sha256" in state["error"] and "repo/ctr/5/model.pt" in state["error"]
        assert "ctr@5: repository error (hash_mismatch)" in leaf.log(100_000)
        assert recent_versions(load) == {"ctr@3", "eng@1"}   # the loaded ones keep scoring
        s3.client().put_object(Bucket=bucket, Key="repo/ctr/5/model.pt", Body=exported)
        wait_for("traffic on ctr@5", lambda: "ctr@5" in recent_versions(load), timeout=60)
    finally:
        load.stop()
    check_replies(world, load)
    cached = (tmp_path / "cache/ctr/5/model.pt").read_bytes()
    assert cached == exported


def test_the_store_down_and_downloads_cut_halfway_delay_a_version_never_serving(
        world, s3, bucket, process_runner, tmp_path):
    url = f"s3://{bucket}/repo"
    upload(world["repo"], url)
    proxy = CappedProxy(s3.port)
    env = s3.env(proxy.endpoint)
    try:
        stages, leaf, load = start(world, process_runner, tmp_path, url, env=env)
        try:
            proxy.down()   # the store goes away while the leaf serves
            stages.deploy(world["b2"], "canary")
            stages.deploy_models("canary", ["ctr@5"], wait_s=30)
            wait_for("ctr@5 unreachable", lambda: repo_errors(leaf.metrics_port, "ctr@5",
                                                              "unreachable") >= 1, timeout=60)
            assert recent_versions(load, 30) == {"ctr@3", "eng@1"}
            proxy.cap(8 * 1024)   # back, but every connection dies 8 KiB in (of 21 KiB)
            wait_for("ctr@5 cut halfway", lambda: repo_errors(leaf.metrics_port, "ctr@5",
                                                              "interrupted") >= 1, timeout=60)
            assert leaf_state(leaf, "ctr@5").get("state") == "failed"
            assert not list((tmp_path / "cache/ctr").glob("5*")), "a partial download is visible"
            assert recent_versions(load) == {"ctr@3", "eng@1"}
            proxy.restore()
            wait_for("traffic on ctr@5", lambda: "ctr@5" in recent_versions(load), timeout=60)
        finally:
            load.stop()
        check_replies(world, load)
        assert proxy.cut_connections >= 1
        downloaded = scrape(leaf.metrics_port)[
            ("trimmer_leaf_repository_downloaded_bytes_total", frozenset())]
        cached = [tmp_path / "cache" / k.replace("@", "/") / "model.pt"
                  for k in ("ctr@3", "eng@1", "ctr@5")]
        assert downloaded == sum(p.stat().st_size for p in cached)
        # A leaf started while the store is down serves what its cache holds.
        leaf.stop()
        proxy.down()
        again = spawn_s3_leaf(process_runner, url, str(tmp_path / "configs"), "canary",
                              cache=str(tmp_path / "cache"), env=env, name="leaf-again")
        again.wait_ready(60, ready=serving("ctr@5", "eng@1"))
    finally:
        proxy.close()


def test_a_fixed_list_leaf_downloads_at_start_or_exits_2_saying_why(
        world, s3, bucket, process_runner, tmp_path):
    url = f"s3://{bucket}/repo"
    upload(world["repo"], url, keys={"ctr@3"})
    leaf = process_runner.leaf(url, models=["ctr@3"],
                               args=["--repo-cache", str(tmp_path / "cache")])
    assert serving("ctr@3")(ping(leaf.endpoint, timeout=2.0))
    dead = s3.env(f"http://127.0.0.1:{free_tcp_port()}")
    endpoint = process_runner.endpoint("leaf-dead")
    down = process_runner.spawn("leaf-dead", [
        sys.executable, "-m", "leafproc", "--repo", url, "--model", "eng@1", "--bind", endpoint,
        "--repo-cache", str(tmp_path / "cache")], endpoint=endpoint, env=dead)
    assert down.wait(60) == 2
    assert f"{url}/eng/1/module_info.json" in down.log() and "did not answer" in down.log()
    assert "Traceback" not in down.log()


def test_a_version_missing_from_a_directory_repository_loads_once_it_is_there(
        world, process_runner, tmp_path):
    """The retries are the follower's, whatever the repository: a version
    deployed before its files were copied in is served once they are."""
    repo = tmp_path / "repo"
    shutil.copytree(world["repo"], repo)
    shutil.rmtree(repo / "ctr/5")
    store_path = str(tmp_path / "configs")
    stages = Stages(seed_store(world, store_path, stages=("canary",)))
    port = free_tcp_port()
    leaf = process_runner.leaf(repo, ready=False, args=[
        "--config-store", store_path, "--stage", "canary", "--repo-retry-max-s", "1",
        "--metrics-port", str(port)])
    leaf.wait_ready(60, ready=serving("ctr@3", "eng@1"))
    stages.deploy(world["b2"], "canary")
    stages.deploy_models("canary", ["ctr@5"], wait_s=30)
    wait_for("ctr@5 not found", lambda: repo_errors(port, "ctr@5", "not_found") >= 2, timeout=60)
    assert leaf_state(leaf, "ctr@5").get("state") == "failed"
    shutil.copytree(os.path.join(world["repo"], "ctr/5"), repo / "ctr/5")
    leaf.wait_ready(60, ready=serving("ctr@3", "ctr@5", "eng@1"))
