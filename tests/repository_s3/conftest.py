"""The model repository on a real S3-API server (moto's, started here).

`s3` is one moto server for the session, its ``AWS_*`` variables set in
this process's environment (so that what the tests spawn inherits them)
and taken away after; `bucket` a fresh bucket per test, so no test sees
another's objects. `upload` publishes a directory repository's versions to
an s3:// repository through the project's own publish step.
"""
from __future__ import annotations

import os
import sys
import uuid

import pytest

from tests.rollout.conftest import world  # noqa: F401  (the staged world, as a fixture)
from tests.support.procs import ProcessRunner
from tests.support.s3 import MotoServer, require_moto


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    require_moto()
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def upload(local_repo, url: str, keys=None) -> None:
    """Publish ``keys`` (default: every version) of the directory repository
    ``local_repo`` to the repository at ``url``."""
    from signatures.repository import open_repository
    from signatures.repository.module_info import ModelRepository
    from signatures.repository.publish import publish
    src, dst = ModelRepository(local_repo), open_repository(url)
    for model, version in src.iter_versions():
        if keys is None or f"{model}@{version}" in keys:
            path, info = src.load(model, version)
            with open(path, "rb") as f:
                publish(dst, f.read(), info)


def spawn_s3_leaf(runner: ProcessRunner, repo_url: str, store_path: str, stage: str, *,
                  cache: str, env: dict | None = None, name: str = "leaf-0", args=()):
    """A leaf following ``stage``, its repository ``repo_url``, not waited for."""
    endpoint = runner.endpoint(name)
    argv = [sys.executable, "-m", "leafproc", "--repo", repo_url, "--repo-cache", cache,
            "--bind", endpoint, "--name", name, "--threads", "1", "--config-store", store_path,
            "--stage", stage, "--max-wait-ms", "0", "--retire-grace-s", "1",
            "--repo-retry-max-s", "2", *args]
    return runner.spawn(f"{name}-{stage}", argv, endpoint=endpoint,
                        ipc_paths=[endpoint[len("ipc://"):]], env=env)
