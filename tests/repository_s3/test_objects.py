"""`ObjectRepository` against a real S3-API server: publishing, reading,
downloading into the cache, and what it refuses (a replaced object, a
download broken halfway, objects over their limits, a store that is down)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from signatures.derive.exporter import ExportError
from signatures.repository import open_repository
from signatures.repository.module_info import ModelRepository
from signatures.repository.objects import MAX_INFO_BYTES, FetchError, ObjectRepository
from signatures.repository.publish import publish
from tests.support.models import GenericScorer, spec, write_model
from tests.support.procs import free_tcp_port
from tests.support.s3 import CappedProxy

from .conftest import upload

INPUTS = [spec("a"), spec("b")]


def DEAD() -> str:
    return f"http://127.0.0.1:{free_tcp_port()}"   # nothing listens there


class PaddedScorer(GenericScorer):
    """A GenericScorer carrying ``mib`` MiB of weights it never reads: an
    artifact large enough to be cut halfway."""

    def __init__(self, dense, ragged, mib: int = 3):
        super().__init__(dense, ragged)
        self.pad = torch.nn.Parameter(torch.rand(mib << 18), requires_grad=False)


@pytest.fixture
def local(tmp_path):
    """A directory repository: m@1 (small), m@2 (3 MiB)."""
    repo = tmp_path / "local"
    write_model(repo, "m", "1", INPUTS)
    write_model(repo, "m", "2", INPUTS, module=PaddedScorer(["a", "b"], []))
    return repo


def remote(bucket, tmp_path, endpoint=None, **kw) -> ObjectRepository:
    options = {"endpoint_url": endpoint} if endpoint else None
    return ObjectRepository(f"s3://{bucket}/models", cache=str(tmp_path / "cache"),
                            storage_options=options, **kw)


def cache_entries(tmp_path) -> list[str]:
    """Every file and directory under the cache, hidden ones included."""
    out = []
    for d, dirs, files in os.walk(tmp_path / "cache"):
        out += [os.path.relpath(os.path.join(d, n), tmp_path / "cache") for n in dirs + files]
    return sorted(out)


def test_publish_list_read_and_download_verified(bucket, tmp_path, local):
    repo = open_repository(f"s3://{bucket}/models", cache=str(tmp_path / "cache"))
    assert isinstance(repo, ObjectRepository) and repo.models() == []
    upload(local, repo.root)
    assert repo.models() == ["m"] and repo.versions("m") == ["1", "2"]
    assert repo.has("m", "2") and not repo.has("m", "3")
    want = ModelRepository(local).info("m", "2")
    assert repo.info("m", "2") == want
    path, info = repo.load("m", "2")
    assert info == want and path == str(tmp_path / "cache/m/2/model.pt")
    assert open(path, "rb").read() == (local / "m/2/model.pt").read_bytes()
    assert cache_entries(tmp_path) == ["m", "m/2", "m/2/model.pt", "m/2/module_info.json"]


def test_the_cache_serves_what_it_holds_when_the_store_is_down(bucket, tmp_path, local):
    upload(local, f"s3://{bucket}/models")
    remote(bucket, tmp_path).load("m", "1")
    dead = remote(bucket, tmp_path, endpoint=DEAD())   # nothing behind it
    assert dead.load("m", "1")[1].key == "m@1"
    with pytest.raises(FetchError) as exc:
        dead.load("m", "2")
    assert exc.value.kind == "unreachable"
    # A cached copy damaged since is not served: fetched again.
    with open(tmp_path / "cache/m/1/model.pt", "ab") as f:
        f.write(b"x")
    assert remote(bucket, tmp_path).load("m", "1")[1].key == "m@1"
    assert open(tmp_path / "cache/m/1/model.pt", "rb").read() == \
        (local / "m/1/model.pt").read_bytes()


def test_republishing_is_a_no_op_and_a_changed_version_is_refused(bucket, tmp_path, local):
    repo = remote(bucket, tmp_path)
    upload(local, repo.root)
    path, info = ModelRepository(local).load("m", "1")
    data = open(path, "rb").read()
    assert publish(repo, data, info) == f"s3://{bucket}/models/m/1"
    other_path, other = write_model(tmp_path / "other", "m", "1", INPUTS, fail_on="a")
    with pytest.raises(ExportError, match="immutable"):
        publish(repo, open(other_path, "rb").read(), other)
    _, fork = write_model(tmp_path / "other", "m", "3", [spec("a"), spec("c")])
    with pytest.raises(ExportError, match="same signature"):
        publish(repo, b"whatever", fork)


def test_an_object_replaced_with_other_bytes_is_refused_and_nothing_cached(s3, bucket, tmp_path,
                                                                          local):
    upload(local, f"s3://{bucket}/models")
    original = (local / "m/2/model.pt").read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    s3.client().put_object(Bucket=bucket, Key="models/m/2/model.pt", Body=bytes(tampered))
    with pytest.raises(FetchError, match="sha256") as exc:
        remote(bucket, tmp_path).load("m", "2")
    assert exc.value.kind == "hash_mismatch" and "m/2/model.pt" in str(exc.value)
    assert cache_entries(tmp_path) == ["m"]   # no version, no temporary left
    s3.client().put_object(Bucket=bucket, Key="models/m/2/model.pt", Body=original)
    assert remote(bucket, tmp_path).load("m", "2")[1].key == "m@2"


def test_a_download_killed_halfway_is_refused_and_leaves_nothing(s3, bucket, tmp_path, local):
    upload(local, f"s3://{bucket}/models")
    proxy = CappedProxy(s3.port)
    try:
        proxy.cap(512 * 1024)   # every connection closed after 512 KiB of a 3 MiB object
        repo = remote(bucket, tmp_path, endpoint=proxy.endpoint)
        with pytest.raises(FetchError) as exc:
            repo.load("m", "2")
        assert exc.value.kind == "interrupted", exc.value
        assert proxy.cut_connections >= 1
        assert cache_entries(tmp_path) == ["m"]
        assert repo.load("m", "1")[1].key == "m@1"   # a small one passes under the cap
        proxy.restore()
        path, info = repo.load("m", "2")
        assert open(path, "rb").read() == (local / "m/2/model.pt").read_bytes()
    finally:
        proxy.close()


def test_sizes_are_bounded_before_reading(s3, bucket, tmp_path, local):
    upload(local, f"s3://{bucket}/models")
    small = remote(bucket, tmp_path, max_artifact_bytes=1 << 20)
    with pytest.raises(FetchError, match="over the limit") as exc:
        small.load("m", "2")
    assert exc.value.kind == "too_large" and cache_entries(tmp_path) == []
    assert small.load("m", "1")[1].key == "m@1"
    big = b"{" + b" " * MAX_INFO_BYTES + b"}"
    s3.client().put_object(Bucket=bucket, Key="models/m/7/module_info.json", Body=big)
    with pytest.raises(FetchError, match="refused unread") as exc:
        small.info("m", "7")
    assert exc.value.kind == "too_large"


def test_a_module_info_naming_another_version_or_no_hash_is_refused(s3, bucket, tmp_path, local):
    upload(local, f"s3://{bucket}/models")
    info = json.loads((local / "m/1/module_info.json").read_text())
    s3.client().put_object(Bucket=bucket, Key="models/m/8/module_info.json",
                           Body=json.dumps(info).encode())
    with pytest.raises(FetchError, match="describes m@1, not m@8"):
        remote(bucket, tmp_path).load("m", "8")
    info.update(version="9", artifact_sha256="")
    s3.client().put_object(Bucket=bucket, Key="models/m/9/module_info.json",
                           Body=json.dumps(info).encode())
    with pytest.raises(FetchError, match="records no artifact_sha256"):
        remote(bucket, tmp_path).load("m", "9")
    s3.client().put_object(Bucket=bucket, Key="models/m/10/module_info.json", Body=b"{not json")
    with pytest.raises(FetchError) as exc:
        remote(bucket, tmp_path).info("m", "10")
    assert exc.value.kind == "invalid"


def test_a_store_that_is_down_is_unreachable_not_empty(bucket, tmp_path):
    dead = remote(bucket, tmp_path, endpoint=DEAD())
    for call in (dead.models, lambda: dead.versions("m"), lambda: dead.info("m", "1")):
        with pytest.raises(FetchError) as exc:
            call()
        assert exc.value.kind == "unreachable" and "did not answer" in str(exc.value)


def test_what_a_killed_download_left_goes_and_a_running_ones_stays(bucket, tmp_path, local):
    upload(local, f"s3://{bucket}/models")
    parent = tmp_path / "cache/m"
    dead, running = parent / ".tmp-1-999999999-deadbeef", parent / f".tmp-1-{os.getppid()}-cafe"
    for d in (dead, running):
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"part")
    remote(bucket, tmp_path).load("m", "1")
    assert not dead.exists() and running.exists()


def test_a_cache_that_cannot_be_written_is_said_so(bucket, tmp_path, local):
    upload(local, f"s3://{bucket}/models")
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    with pytest.raises(FetchError, match="cannot write into the cache") as exc:
        remote(bucket, tmp_path).load("m", "1")
    assert exc.value.kind == "cache"


def test_a_url_no_fsspec_package_serves_is_refused_saying_what_would(tmp_path):
    with pytest.raises(FetchError, match="needs its fsspec package") as exc:
        open_repository("nosuchproto://bucket/models", cache=str(tmp_path / "cache"))
    assert exc.value.kind == "invalid"
    assert isinstance(open_repository(f"file://{tmp_path}"), ModelRepository)
    assert not isinstance(open_repository(f"file://{tmp_path}"), ObjectRepository)
