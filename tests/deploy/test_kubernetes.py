"""deploy/k8s/ renders, validates offline against a pinned Kubernetes release,
and holds what its users rely on: probes on the metrics port, GPUs for leaves,
/dev/shm in memory and large enough for the rings, keys in Secrets only,
arguments the processes accept, and a metric the autoscaler can find."""
from __future__ import annotations

import argparse
import copy
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.k8s import (
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    REPO,
    config_map,
    containers,
    expand,
    mounted_at,
    objects,
    pod_spec,
    port_number,
    render,
    role,
    volume_for,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate")

POD_ENV = {"POD_NAME": "trimmer-root-5d8f-x2x9q", "POD_IP": "10.8.3.17"}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    assert m, q
    return int(m.group(1)) * UNITS.get(m.group(2) or "", 1)


def settings_of(overlay, spec, c, tmp_path, monkeypatch):
    """The settings the container's process starts with: its args parsed by the
    process's own options, its --config read from the ConfigMap mounted there,
    and the whole check run, as at start."""
    from leafproc.__main__ import parse_args as parse_leaf_args
    from rootproc.settings import RootSettings
    from signatures.runtime.settings import add_arguments, load

    monkeypatch.setenv("TRIMMER_ZK_AUTH", "trimmer:from-the-secret")
    args = [expand(a, POD_ENV) for a in c["args"][1:]]
    assert "$(" not in " ".join(args), "an arg names a variable the container does not define"
    config = args[args.index("--config") + 1]
    mount, volume = mounted_at(spec, c, config)
    assert "configMap" in volume, f"{c['name']}: {config} is not in a ConfigMap"
    here = Path(tempfile.mkdtemp(prefix=c["name"], dir=tmp_path))
    for key, text in config_map(overlay, volume["configMap"]["name"])["data"].items():
        (here / key).write_text(text)
    args[args.index("--config") + 1] = str(here / config[len(mount) + 1:])
    if role(c) == "leaf":
        return parse_leaf_args(args)
    parser = argparse.ArgumentParser()
    add_arguments(parser, RootSettings)
    parser.add_argument("--log-level")
    return load(RootSettings, parser.parse_args(args))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_and_validates_against_the_pinned_kubernetes(overlay):
    rendered = render(overlay)
    kinds = {o["kind"] for o in rendered}
    assert {"ConfigMap", "DaemonSet", "Service"} <= kinds
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validation_is_real():
    """A misspelt field and a wrong type are refused: the check above can fail."""
    deployment = copy.deepcopy(objects("base", "Deployment")[0])
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(objects("base", "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5550"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_real_settings_and_is_probed_on_its_metrics_port(overlay, tmp_path,
                                                                               monkeypatch):
    seen = set()
    for _, spec, c in containers(overlay):
        seen.add(role(c))
        settings = settings_of(overlay, spec, c, tmp_path, monkeypatch)
        # kubelet probes the pod's IP: the metrics server must listen beyond loopback.
        assert settings.metrics_addr == "0.0.0.0" and settings.metrics_port, c["name"]
        for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                            ("livenessProbe", "/livez")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (c["name"], probe)
            assert port_number(c, get["port"]) == settings.metrics_port, (c["name"], probe)
        assert settings.metrics_port in [p["containerPort"] for p in c["ports"]]
        # what it binds over tcp is declared, and secured (no `insecure` anywhere)
        assert not settings.insecure, c["name"]
        for ep in settings.bind:
            if ep.startswith("tcp://"):
                assert int(ep.rsplit(":", 1)[1]) in [p["containerPort"] for p in c["ports"]], ep
                assert settings.curve and settings.curve.authorized not in (None, "*"), c["name"]
    assert seen == {"root", "leaf"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stop_grace_outlasts_the_drain(overlay, tmp_path, monkeypatch):
    for w, spec, c in containers(overlay):
        settings = settings_of(overlay, spec, c, tmp_path, monkeypatch)
        drain_s = settings.drain_timeout_s if role(c) == "leaf" else settings.max_deadline_ms / 1000
        assert spec["terminationGracePeriodSeconds"] > drain_s, w["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_leaves_hold_a_gpu_and_shm_in_memory(overlay):
    leaves = [(w, spec, c) for w, spec, c in containers(overlay) if role(c) == "leaf"]
    assert leaves
    for w, spec, c in leaves:
        res = c["resources"]
        assert int(res["limits"]["nvidia.com/gpu"]) >= 1, w["metadata"]["name"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
        shm = volume_for(spec, c, "/dev/shm")
        assert shm and shm["emptyDir"]["medium"] == "Memory" and quantity(shm["emptyDir"]["sizeLimit"])
        assert w["kind"] in ("DaemonSet", "StatefulSet")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labelled_group_is_the_name_the_leaf_registers(overlay):
    for w, spec, c in containers(overlay):
        if role(c) == "leaf":
            group = w["spec"]["template"]["metadata"]["labels"]["feature-trimmer/leaf-group"]
            assert c["args"][c["args"].index("--name") + 1] == group
            assert spec["nodeSelector"]["feature-trimmer/leaf-group"] == group
            assert w["spec"]["selector"]["matchLabels"]["feature-trimmer/leaf-group"] == group


def test_fleet_has_two_leaf_groups_and_autoscaled_roots():
    groups = sorted(w["spec"]["template"]["metadata"]["labels"]["feature-trimmer/leaf-group"]
                    for w in objects("overlays/fleet", "DaemonSet"))
    assert groups == ["gpu-a", "gpu-b"]
    assert {o["metadata"].get("namespace") for o in render("overlays/fleet")} == {"trimmer"}


def test_rings_fit_the_shared_shm(tmp_path, monkeypatch):
    """Where a root reaches its leaf through shared memory (single-node), both
    containers share one memory-backed /dev/shm that holds every ring
    (links x slots x slot_bytes), the ipc directory, the uid and the pid
    namespace (rings are named by their owner's pid)."""
    overlay = "overlays/single-node"
    (w,) = objects(overlay, "DaemonSet")
    spec = pod_spec(w)
    by_role = {role(c): c for c in spec["containers"]}
    root = settings_of(overlay, spec, by_role["root"], tmp_path, monkeypatch)
    assert root.shm.enabled
    links = [ep for leaf in root.leaves for ep in leaf.endpoints
             if ep.startswith("ipc://") and leaf.transport in ("auto", "shm")]
    assert links
    shm = {volume_for(spec, c, "/dev/shm")["name"] for c in by_role.values()}
    assert len(shm) == 1
    volume = volume_for(spec, by_role["root"], "/dev/shm")["emptyDir"]
    assert volume["medium"] == "Memory"
    assert quantity(volume["sizeLimit"]) >= len(links) * root.shm.slots * root.shm.slot_bytes
    for ep in links:
        leaf_binds = settings_of(overlay, spec, by_role["leaf"], tmp_path, monkeypatch).bind
        assert ep in leaf_binds
        path = ep[len("ipc://"):].rsplit("/", 1)[0]
        assert volume_for(spec, by_role["root"], path) == volume_for(spec, by_role["leaf"], path)
    assert spec["shareProcessNamespace"] is True
    assert {c.get("securityContext", {}).get("runAsUser", spec["securityContext"]["runAsUser"])
            for c in by_role.values()} == {spec["securityContext"]["runAsUser"]}
    # tmpfs is RAM: the pod's memory limits make room for it
    limit = sum(quantity(c["resources"]["limits"]["memory"]) for c in by_role.values())
    assert limit > quantity(volume["sizeLimit"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_unprivileged_read_only_with_requests(overlay):
    for w, spec, c in containers(overlay):
        name = f"{w['metadata']['name']}/{c['name']}"
        pod_sc, sc = spec["securityContext"], c["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
        assert spec["automountServiceAccountToken"] is False, name
        req, lim = c["resources"]["requests"], c["resources"]["limits"]
        assert req["cpu"] and quantity(lim["memory"]) >= quantity(req["memory"]), name
        assert volume_for(spec, c, "/tmp")["emptyDir"] is not None, name   # writable scratch


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_root_memory_limits_fit_the_container(overlay, tmp_path, monkeypatch):
    """A root's default max_memory_nbytes is half the *node's* memory, which a
    container's limit does not change: the config sets it under the limit."""
    for _, spec, c in containers(overlay):
        if role(c) == "root":
            s = settings_of(overlay, spec, c, tmp_path, monkeypatch)
            limit = quantity(c["resources"]["limits"]["memory"])
            assert s.max_memory_nbytes is not None and s.max_memory_nbytes < limit
            assert s.max_request_memory_nbytes <= s.max_memory_nbytes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keys_and_credentials_come_from_secrets_only(overlay, tmp_path, monkeypatch):
    secret_text = re.compile(r"secret-key\s*=|://[^/\s\"@]*:[^/\s\"@]+@|BEGIN [A-Z ]*PRIVATE KEY")
    for cm in objects(overlay, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            assert not secret_text.search(text), f"ConfigMap {cm['metadata']['name']} {key}"
    assert not objects(overlay, "Secret"), "Secrets are made beside the manifests, never committed"
    for _w, spec, c in containers(overlay):
        for var in c.get("env", []):
            if re.search(r"AUTH|PASSWORD|SECRET|TOKEN", var["name"]):
                assert "secretKeyRef" in var.get("valueFrom", {}), (c["name"], var["name"])
        s = settings_of(overlay, spec, c, tmp_path, monkeypatch)
        assert s.curve is not None
        for path in (s.curve.secret_key, s.curve.authorized):
            _, volume = mounted_at(spec, c, path)
            assert "secret" in volume, (c["name"], path)
        _, volume = mounted_at(spec, c, s.curve.secret_key)
        assert volume["secret"]["defaultMode"] & 0o077 == 0, "a secret key readable by others"
        auth_env = s.zookeeper.auth_env
        assert auth_env in [v["name"] for v in c["env"]], (c["name"], auth_env)
        if role(c) == "root" and s.feature_store.startswith("redis"):
            assert s.redis.password_env in [v["name"] for v in c["env"]]


def test_the_autoscaler_metric_is_the_roots_and_the_adapters():
    from rootproc.metrics import RootMetrics

    names = {m.name for m in RootMetrics().registry.collect()}
    (hpa,) = objects("base", "HorizontalPodAutoscaler")
    (deployment,) = objects("base", "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert role(pod_spec(deployment)["containers"][0]) == "root"
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom == ["trimmer_root_in_flight"]
    assert "trimmer_root_in_flight" in names
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    assert custom[0] in served
    assert all(custom[0] in r["seriesQuery"] for r in adapter["rules"]["custom"])


def test_the_image_runs_trimmer_as_the_manifests_uid():
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["trimmer"\]$', dockerfile, re.M)
    user = re.findall(r"^USER (\d+)", dockerfile, re.M)
    assert user and all(int(spec["securityContext"]["runAsUser"]) == int(user[-1])
                        for overlay in OVERLAYS for _, spec, _ in containers(overlay))
    from signatures.cli import COMMANDS

    assert {role(c) for overlay in OVERLAYS for _, _, c in containers(overlay)} <= set(COMMANDS)


def test_the_docs_name_every_secret_and_configmap_the_manifests_use():
    """docs/operations.md, "Deploying on Kubernetes", tells operators which
    Secrets to make: every one a pod reads is in its table."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## Deploying on Kubernetes"):]
    section = section[:section.index("\n## ", 1)]
    used = set()
    for overlay in OVERLAYS:
        for _, spec, c in containers(overlay):
            used |= {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
            used |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})}
    for name in used:
        assert f"| `{name}`" in section, f"Secret {name} is not in the docs' Secrets table"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_mapped_to_a_registry_and_tag(overlay):
    """The manifests' image names are placeholders that `images:` maps; one left
    unmapped would be pulled from Docker Hub as `feature-trimmer:latest`."""
    for w, _, c in containers(overlay):
        image = c["image"]
        assert re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+:[\w.-]+", image), \
            (w["metadata"]["name"], c["name"], image)
