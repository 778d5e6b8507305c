"""A real Prometheus, the alert rules of deploy/observability loaded, scrapes
a running root and two leaves; its alerts go pending as the fleet goes wrong:
a model version served without its signature (a trim gap), then a leaf
replica out of rotation."""
from __future__ import annotations

import os
import sys
import time
import urllib.parse

import numpy as np
import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.root.world import CANDIDATE_IDS, GAP_MODEL, USER_IDS, root_config, write_root_config
from tests.support.procs import free_tcp_port, processes_mentioning

from .prometheus_server import PrometheusServer
from .test_rules import RULES, dashboard_exprs, grafana

pytestmark = pytest.mark.slow


def alerts(prom: PrometheusServer, name: str) -> list[dict]:
    """The alert's instances, pending or firing."""
    return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == name]


def until(what: str, cond, timeout: float, step=None):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        got = cond()
        if got:
            return got
        if step is not None:
            step()
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.timeout(600)   # the waits below are generous: a loaded machine scrapes late
def test_prometheus_scrapes_root_and_leaves_and_the_alerts_fire(world, process_runner, tmp_path):
    ports = {"leaf-0": free_tcp_port(), "leaf-1": free_tcp_port(), "root": free_tcp_port()}
    leaf0 = process_runner.leaf(world["repo"], models=["ctr@3", "eng@1", GAP_MODEL[0]],
                                name="leaf-0", args=["--metrics-port", str(ports["leaf-0"])])
    leaf1 = process_runner.leaf(world["repo"], models=["div@2"], name="leaf-1",
                                args=["--metrics-port", str(ports["leaf-1"])])
    bind = process_runner.endpoint("root")
    cfg = root_config(world, {"leaf-0": leaf0.endpoint, "leaf-1": leaf1.endpoint}, bind,
                      metrics_port=ports["root"])
    path = write_root_config(os.path.join(process_runner.tmp_path, "root.json"), cfg)
    root = process_runner.spawn("root", [sys.executable, "-m", "rootproc", "--config", path],
                                endpoint=bind, ipc_paths=[bind[len("ipc://"):]])
    root.wait_ready(30, ready=lambda p: bool(p.get("leaves")) and all(
        link["healthy"] and link["models"] for link in p["leaves"]))
    target = "127.0.0.1:{}".format
    prom = PrometheusServer(tmp_path / "prometheus",
                            {"trimmer-root": [target(ports["root"])],
                             "trimmer-leaf": [target(ports["leaf-0"]), target(ports["leaf-1"])]},
                            rule_files=[RULES])
    with prom, ScoringClient(root.endpoint) as client:
        until("every target scraped and up", lambda: (
            len(ts := prom.api("targets")["activeTargets"]) == 3
            and all(t["health"] == "up" for t in ts)), timeout=60)
        groups = prom.api("rules")["groups"]
        assert {g["file"] for g in groups} == {os.fspath(RULES)}
        assert not [a for a in prom.api("alerts")["alerts"]
                    if a["labels"]["alertname"] in ("TrimmerTrimGap",
                                                    "TrimmerLeafReplicaOutOfRotation")]

        # ctr@4 is on leaf-0 but not in the root's config: every request for it is a trim gap.
        cands = CANDIDATE_IDS[:8]

        def score_gap():
            res = client.score(int(USER_IDS[0]), np.asarray(cands), models=[GAP_MODEL[0]])
            assert not res.errors, res.errors
        gap = until("TrimmerTrimGap pending or firing", lambda: alerts(prom, "TrimmerTrimGap"),
                    timeout=120, step=score_gap)
        assert gap[0]["labels"]["model"] == GAP_MODEL[0] and gap[0]["state"] in ("pending",
                                                                                  "firing")
        assert gap[0]["labels"]["severity"] == "warning"
        # The dashboard's queries run against what was scraped; the bytes panels have data.
        for expr in dashboard_exprs():
            prom.api("query?query=" + urllib.parse.quote(grafana(expr)))
        sent = prom.api("query?query=" + urllib.parse.quote(
            'sum(trimmer_root_sent_bytes_total{job="trimmer-root"})'))["result"]
        assert sent and float(sent[0]["value"][1]) > 0, sent

        leaf1.stop()   # a replica out of rotation: the root's leaf_up goes 0
        down = until("TrimmerLeafReplicaOutOfRotation pending or firing",
                     lambda: alerts(prom, "TrimmerLeafReplicaOutOfRotation"), timeout=120)
        assert [a["labels"]["leaf"] for a in down] == ["leaf-1"], down
        # The scrape sees the leaf gone too.
        until("leaf-1's target down", lambda: any(
            t["health"] == "down" and t["scrapeUrl"].endswith(f":{ports['leaf-1']}/metrics")
            for t in prom.api("targets")["activeTargets"]), timeout=60)
    assert prom.proc is not None and prom.proc.poll() is not None   # stopped
    assert not processes_mentioning(prom.config)
