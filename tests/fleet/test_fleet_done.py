"""Issue 28's "done when", as an operator deploys a fleet: a model repository
on an S3-API server (moto's), two versions of a model exported into it with
`trimmer export --repo s3://...`, bundles built from it, a ZooKeeper stage,
features in Redis; two leaves (groups ``leaf-b`` and ``leaf-c``) downloading
their versions from the store, one root following the stage and fetching
from Redis, each with a metrics port a real Prometheus scrapes.

`/readyz` of every process is probed until it answers 200; then, scoring
all along, a new version goes out (deploy and deploy-models on canary,
promote to production) and back (`trimmer rollback production`). Every
request is answered, none fails, and every score equals the exported
artifact, downloaded from the store and called directly. Prometheus has
every target up and a trimmer series of each process. Nothing is left behind.
"""
from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from signatures.bundle import Bundle
from tests.featurestore.redis_server import RedisServer
from tests.featurestore.test_root_redis import load_redis
from tests.observability.prometheus_server import PrometheusServer
from tests.repository_s3.conftest import bucket, s3, spawn_s3_leaf  # noqa: F401  (fixtures)
from tests.rollout.conftest import REQUESTS, Load, check_replies, serving, wait_for
from tests.root.test_probes import probe, status_is, until
from tests.root.world import expected_features
from tests.support.models import direct_scores, script_for_export
from tests.support.procs import free_tcp_port, ping, processes_mentioning
from tests.support.signals import alive, shm_segments_of, socket_files

from .conftest import GROUPS, PLACE_1, PLACE_2, routes, spawn_root
from .test_zk_store import trimmer

pytestmark = pytest.mark.slow
KEYS = ("ctr@3", "ctr@5", "eng@1")   # two versions of ctr, one of eng
# Generous: five Python processes, Java, Redis and Prometheus on two shared cores.
READY_S = 180


def run_ok(*argv: str) -> str:
    out = trimmer(*argv)
    assert out.returncode == 0, (argv, out.stdout, out.stderr)
    return out.stdout


def export_versions(world, repo: str, tmp_path) -> None:
    """Each version scripted as its author would hand it over, exported into ``repo``."""
    for key in KEYS:
        model, version = key.split("@")
        source = script_for_export(tmp_path / f"{model}-{version}.pt", world["inputs"][key])
        out = run_ok("export", source, "--repo", repo, "--model", model, "--version", version,
                     "--schema", world["schema"])
        assert f"exported {key} as TorchScript" in out, out


def build_bundle(world, repo: str, placement: dict, path) -> Bundle:
    placement_path = path.with_suffix(".placement.json")
    placement_path.write_text(json.dumps(placement))
    run_ok("bundle", "build", "--repo", repo, "--schema", world["schema"], "--placement",
           str(placement_path), "-o", str(path))
    return Bundle.load(path)


def direct_expected(world, repo: str, cache) -> list[dict]:
    """Per request of `REQUESTS`, each version's scores from its artifact as
    the store holds it, downloaded here and called in this process."""
    from signatures.repository import open_repository
    store = open_repository(repo, cache=str(cache))
    loaded = {key: store.load(*key.split("@")) for key in KEYS}
    out = []
    for user, cands in REQUESTS:
        feats = expected_features(world["users"], world["cands"], user, cands)
        out.append({key: direct_scores(path, info.inputs,
                                       {s.name: feats[s.name] for s in info.inputs}, len(cands))
                    for key, (path, info) in loaded.items()})
    return out


def per_instance(prom: PrometheusServer, expr: str) -> dict[str, float]:
    """instance -> value of ``sum by (instance) (expr)``."""
    query = urllib.parse.quote(f"sum by (instance) ({expr})")
    return {r["metric"]["instance"]: float(r["value"][1])
            for r in prom.api("query?query=" + query)["result"]}


def positive(values: dict[str, float], instances: set) -> bool:
    """Whether ``values`` holds a value above 0 for each of ``instances``, and no other."""
    return set(values) == instances and all(v > 0 for v in values.values())


def hosted(leaf) -> set | None:
    """The versions a leaf's pong lists, None when it does not answer."""
    pong = ping(leaf.endpoint, 5.0)
    return None if pong is None else {m["model"] for m in pong.get("models", [])}


def recent_versions(load: Load, n: int = 20) -> set | None:
    """The versions the last ``n`` replies scored, once there are ``n``."""
    if load.count() < n:
        return None
    return {r["model"] for _, _, res in load.replies[-n:] for r in res.results}


@pytest.mark.timeout(1200)
def test_a_fleet_from_object_storage_rolls_a_version_out_and_back(
        world, zk_server, s3, bucket, process_runner, tmp_path):  # noqa: F811
    repo = f"s3://{bucket}/models"
    export_versions(world, repo, tmp_path)
    b1 = build_bundle(world, repo, PLACE_1, tmp_path / "b1.json")
    b2 = build_bundle(world, repo, PLACE_2, tmp_path / "b2.json")
    expected = direct_expected(world, repo, tmp_path / "direct")
    address = zk_server.address()
    store = ("--config-store", address)
    run_ok("deploy", str(tmp_path / "b1.json"), "--stage", "production", *store)
    run_ok("deploy-models", "ctr@3", "eng@1", "--stage", "production", "--repo", repo, *store)

    (tmp_path / "redis").mkdir()
    ports = {"root": free_tcp_port(), **{g: free_tcp_port() for g in GROUPS}}
    target = "127.0.0.1:{}".format
    prom = PrometheusServer(tmp_path / "prometheus",
                            {"trimmer-root": [target(ports["root"])],
                             "trimmer-leaf": [target(ports[g]) for g in GROUPS]})
    load = None
    pids: list[int] = []
    with RedisServer(tmp_path / "redis") as redis, prom:
        try:
            features = redis.url("fleet")
            load_redis(world, features)
            leaves = {g: spawn_s3_leaf(process_runner, repo, address, "production",
                                       cache=str(tmp_path / f"cache-{g}"), name=g,
                                       args=["--metrics-port", str(ports[g])])
                      for g in GROUPS}
            root = spawn_root(process_runner, world, address, "production",
                              feature_store=features, metrics_port=ports["root"])
            pids = [p.pid for p in process_runner.procs]
            for who, port in ports.items():
                code, body = until(f"{who} ready", status_is(port, "/readyz", 200),
                                   timeout=READY_S)
                assert probe(port, "/livez")[0] == 200
                print(f"\n{who} /readyz: {body}")
            code, body = probe(ports["root"], "/readyz")
            assert body.startswith(f"ready: config {b1.id}"), body
            for leaf in leaves.values():
                assert serving("ctr@3", "eng@1")(ping(leaf.endpoint, 5.0))
            root.wait_ready(READY_S, ready=lambda p: routes(
                p, [leaf.endpoint for leaf in leaves.values()]))

            load = Load(root.endpoint)
            load.start()
            wait_for("traffic on both leaves", lambda: {
                r["leaf"] for _, _, res in load.replies for r in res.results} >= set(GROUPS),
                timeout=120)

            # Out: the new version on canary (no process follows it), then promoted.
            t_out = time.monotonic()
            run_ok("deploy", str(tmp_path / "b2.json"), "--stage", "canary", *store)
            run_ok("deploy-models", *KEYS, "--stage", "canary", "--repo", repo, *store)
            run_ok("promote", "canary", "production", *store)
            for leaf in leaves.values():
                leaf.wait_ready(READY_S, ready=serving(*KEYS))
            wait_for("ctr@5 scored", lambda: "ctr@5" in load.versions(since=t_out),
                     timeout=READY_S)
            assert ping(root.endpoint, 5.0)["config"] == b2.id
            for who, port in ports.items():
                until(f"{who} ready on b2", status_is(port, "/readyz", 200), timeout=READY_S)
            before = load.count()
            wait_for("traffic on ctr@5", lambda: load.count() >= before + 20, timeout=120)
            assert "ctr@5" in recent_versions(load, 20), recent_versions(load, 20)

            # Back: the previous config and its models.
            out = run_ok("rollback", "production", "--wait", str(READY_S), *store)
            print(out)
            wait_for("the root on b1", lambda: (ping(root.endpoint, 5.0) or {}).get(
                "config") == b1.id, timeout=60)
            wait_for("only ctr@3 and eng@1 scored", lambda: recent_versions(load) == {
                "ctr@3", "eng@1"} and load.count() >= before + 40, timeout=READY_S)
            for leaf in leaves.values():
                wait_for(f"{leaf.name} without ctr@5", lambda leaf=leaf: hosted(leaf) == {
                    "ctr@3", "eng@1"}, timeout=READY_S)
            for who, port in ports.items():
                until(f"{who} ready after the rollback", status_is(port, "/readyz", 200),
                      timeout=READY_S)

            # Prometheus scraped them all: every target up, each process's series.
            until("every target scraped and up", lambda: (
                len(ts := prom.api("targets")["activeTargets"]) == 3
                and all(t["health"] == "up" for t in ts)), timeout=120)
            leaf_targets = {target(ports[g]) for g in GROUPS}
            until("the root's requests in Prometheus", lambda: per_instance(
                prom, "trimmer_root_requests_total").get(target(ports["root"]), 0) > 0,
                timeout=120)
            until("each leaf's requests in Prometheus", lambda: positive(per_instance(
                prom, "trimmer_leaf_requests_total"), leaf_targets), timeout=120)
            downloaded = per_instance(prom, "trimmer_leaf_repository_downloaded_bytes_total")
            assert positive(downloaded, leaf_targets), downloaded
            # The root's features came from Redis, the only store it has.
            reads = per_instance(prom, "trimmer_root_store_reads_total")
            assert positive(reads, {target(ports["root"])}), reads
            ctr5 = per_instance(prom, 'trimmer_leaf_requests_total{model="ctr@5"}')
            assert ctr5 and set(ctr5) <= leaf_targets and sum(ctr5.values()) > 0, ctr5
        finally:
            if load is not None:
                load.stop()
            process_runner.close()
    assert load is not None
    figures = load.tally("a fleet from object storage: out and back")
    assert figures["failed"] == 0 and figures["lost"] == 0, figures
    early = [r for t, _, res in load.replies if t < t_out for r in res.results
             if r["model"] == "ctr@5"]
    assert not early, early[:3]
    check_replies({"expected": expected}, load, live=KEYS)
    for proc in [root, *leaves.values()]:
        assert "Traceback" not in proc.log(1_000_000), proc.name
    # Nothing left behind: processes, shared memory, socket files.
    assert not alive(pids), alive(pids)
    assert not shm_segments_of(pids)
    assert not socket_files(tmp_path)
    assert not processes_mentioning(prom.config) and not processes_mentioning(redis.dir)
