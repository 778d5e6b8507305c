"""`trimmer export`, `bundle build` and `deploy-models` with ``--repo s3://...``,
as an operator runs them: real processes, credentials and endpoint from the
environment (botocore's ``AWS_*`` variables)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.signatures.conftest import SCHEMA
from tests.support.procs import REPO_ROOT, free_tcp_port

SRC = "tests.signatures.models:"


def trimmer(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "signatures.cli", *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=300,
                          env={**os.environ, **(env or {})})


def test_export_bundle_and_deploy_models_on_s3(s3, bucket, tmp_path):
    repo = f"s3://{bucket}/repo"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    export = ["export", SRC + "Direct", "--repo", repo, "--model", "ctr", "--schema", str(schema)]
    r = trimmer(*export)
    assert r.returncode == 0 and "exported ctr@1 as TorchScript" in r.stdout, r.stderr
    objects = s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in objects) == ["repo/ctr/1/model.pt",
                                                 "repo/ctr/1/module_info.json"]
    r = trimmer(*export, "--version", "1")           # a retry: recognised, nothing written
    assert r.returncode == 0 and "ctr@1 already exported" in r.stdout, r.stderr
    r = trimmer(*export)                             # the next version
    assert r.returncode == 0 and "exported ctr@2" not in r.stdout and "already" in r.stdout
    export[1] = SRC + "DirectPlus"
    r = trimmer(*export, "--version", "1")           # other features as the same version
    assert r.returncode == 1 and "immutable" in r.stderr, r.stderr
    r = trimmer(*export, "--version", "2")           # other features as another version
    assert r.returncode == 1 and "same signature" in r.stderr, r.stderr

    placement = tmp_path / "placement.json"
    placement.write_text(json.dumps({"leaves": {"leaf-0": {"current": ["ctr@1"]}}}))
    bundle = tmp_path / "bundle.json"
    r = trimmer("bundle", "build", "--repo", repo, "--schema", str(schema), "--placement",
                str(placement), "-o", str(bundle))
    assert r.returncode == 0 and "1 model versions" in r.stdout, r.stderr
    hashes = {k: m["signature_hash"] for k, m in json.loads(bundle.read_text())["models"].items()}
    info = json.loads(s3.client().get_object(Bucket=bucket, Key="repo/ctr/1/module_info.json")
                      ["Body"].read())
    assert hashes == {"ctr@1": info["signature_hash"]}

    store = str(tmp_path / "configs")
    r = trimmer("deploy", str(bundle), "--stage", "canary", "--config-store", store)
    assert r.returncode == 0, r.stderr
    r = trimmer("deploy-models", "ctr@1", "--stage", "canary", "--config-store", store,
                "--repo", repo, "--wait", "0")
    assert r.returncode == 0 and "canary: models ctr@1" in r.stdout, r.stderr
    r = trimmer("deploy-models", "ctr@7", "--stage", "canary", "--config-store", store,
                "--repo", repo, "--wait", "0")
    assert r.returncode == 1 and "ctr@7: not in model repository " + repo in r.stderr, r.stderr


def test_a_store_that_does_not_answer_fails_the_command_saying_so(bucket, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    dead = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_tcp_port()}", "AWS_MAX_ATTEMPTS": "1"}
    r = trimmer("export", SRC + "Direct", "--repo", f"s3://{bucket}/repo", "--model", "ctr",
                "--schema", str(schema), env=dead)
    assert r.returncode == 1 and "did not answer" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
