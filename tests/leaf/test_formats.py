"""Every artifact kind through the leaf's one path (decode -> tensors ->
forward), on the host and on the staged path (one host-to-device copy),
for single and merged (dynamically batched) requests; a real leaf serving
all three kinds; and a kind a leaf cannot load refused at load (not ready,
requests answered ``unavailable``), never at request time.

The model is tests/support/format_models.py, exported once per session in
each format (tests/support/formats.py). Scores must match the TorchScript
version's within SCORE_ATOL + SCORE_RTOL x |score| (1e-5 + 1e-4 x)."""
import json
import shutil

import numpy as np
import pytest
import torch

import _trim
from leafproc.tensors import HostTensors, Part, StagedTensors, to_scores
from signatures.derive.exporter import SCORE_ATOL, SCORE_RTOL, export
from signatures.repository import artifacts
from signatures.repository.module_info import FORMAT, ModuleInfo
from tests.support.formats import MODEL, SOURCE
from tests.support.models import direct_scores, encode_columns, random_columns
from tests.support.procs import Client, ping

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
KINDS = ["torchscript", "export", "aoti"]
MERGES = ([1], [9], [4, 1, 6])   # rows of the requests a forward pass takes at once


def requests(inputs, sizes, rng, user_list):
    """Columns and message parts of requests from one user (merged requests
    must share their per-request lists)."""
    cols = [random_columns(inputs, n, rng) | {"user_recent_pins": user_list} for n in sizes]
    parts = []
    for c, n in zip(cols, sizes):
        buf = bytearray(encode_columns(inputs, c, n).tobytes())  # writable, like a zmq frame
        decoded = _trim.decode(buf)
        parts.append(Part(decoded, np.frombuffer(buf, np.uint8, count=decoded.nbytes), n))
    return cols, parts


def user_list(rng):
    return (rng.integers(0, 1000, 5).astype(np.int64), np.array([0, 5], np.int64))


@pytest.mark.parametrize("builder", [HostTensors(), StagedTensors("cpu")], ids=["host", "staged"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_scores_like_torchscript_alone_and_merged(format_repo, kind, builder, rng):
    info = format_repo.require(kind)
    model = artifacts.load(format_repo.path(kind), info.artifact, torch.device("cpu"))
    reference = format_repo.path("torchscript")
    for sizes in MERGES:
        cols, parts = requests(info.inputs, sizes, rng, user_list(rng))
        with torch.inference_mode():
            got = to_scores(model(builder.build(parts, info.inputs)), sum(sizes))
        want = np.concatenate([direct_scores(reference, info.inputs, c, n)
                               for c, n in zip(cols, sizes)])
        np.testing.assert_allclose(got, want, rtol=SCORE_RTOL, atol=SCORE_ATOL,
                                   err_msg=f"{kind} {sizes}")


def test_leaf_serves_every_kind_and_merges_their_requests(format_repo, process_runner, rng):
    keys = {kind: format_repo.key(kind) for kind in format_repo.built}
    leaf = process_runner.leaf(format_repo.root, models=list(keys.values()), name="formats",
                               args=["--max-wait-ms", "50"])
    pong = ping(leaf.endpoint)
    assert len({m["signature_hash"] for m in pong["models"]}) == 1  # one signature, three formats
    inputs = format_repo.infos["torchscript"].inputs
    one_user = user_list(rng)
    batches = [random_columns(inputs, 8, rng) | {"user_recent_pins": one_user} for _ in range(4)]
    sent, replies = {}, {}
    with Client(leaf.endpoint) as c:
        for key in keys.values():
            for cols in batches:   # back to back: the worker takes them in one window
                rid = c.send({"type": "score", "model": key, "rows": 8, "compression": "none"},
                             encode_columns(inputs, cols, 8))
                sent[rid] = (key, cols)
        for _ in sent:
            header, frames = c.recv(timeout=30)
            replies[header["id"]] = (header, frames)
    merged = {key: 0 for key in keys.values()}
    reference = format_repo.path("torchscript")
    for rid, (key, cols) in sent.items():
        header, frames = replies[rid]
        assert header["ok"] and header["model"] == key, header
        merged[key] = max(merged[key], header["batch_rows"])
        np.testing.assert_allclose(np.frombuffer(frames[0], "<f4"),
                                   direct_scores(reference, inputs, cols, 8),
                                   rtol=SCORE_RTOL, atol=SCORE_ATOL, err_msg=key)
    assert all(rows > 8 for rows in merged.values()), merged   # dynamic batching, every kind


def copy_version(format_repo, kind, repo, model, **artifact_changes):
    """``kind``'s version copied as ``model``@1, its module_info changed as given."""
    src = format_repo.require(kind)
    target = repo / model / "1"
    shutil.copytree(format_repo.path(kind).rsplit("/", 1)[0], target)
    d = json.loads((target / "module_info.json").read_text())
    d.update(model=model, version="1")
    d["artifact"].update(artifact_changes)
    (target / "module_info.json").write_text(json.dumps(d))
    assert d["format"] == FORMAT and ModuleInfo.load(target).signature_hash == src.signature_hash
    return f"{model}@1"


def failed_or_ready(n):
    def ready(pong):
        return sum(bool(m.get("error") or m.get("ready")) for m in pong.get("models", [])) == n
    return ready


def test_leaf_refuses_at_load_what_it_cannot_load(format_repo, process_runner, tmp_path, rng):
    cuda = copy_version(format_repo, "aoti", tmp_path, "gpu", device="cuda")
    old = copy_version(format_repo, "aoti", tmp_path, "old", torch="2.1.0+cu121")
    good = copy_version(format_repo, "export", tmp_path, "good")
    leaf = process_runner.leaf(tmp_path, models=[cuda, old, good], name="refusing", ready=False)
    pong = leaf.wait_ready(60, ready=failed_or_ready(3))
    models = {m["model"]: m for m in pong["models"]}
    assert not models[cuda]["ready"] and not models[old]["ready"] and models[good]["ready"]
    assert "compiled for cuda and this leaf runs on cpu" in models[cuda]["error"]
    assert "compiled with torch 2.1.0+cu121" in models[old]["error"]
    inputs = format_repo.infos["export"].inputs
    cols = random_columns(inputs, 4, rng)
    with Client(leaf.endpoint) as c:
        header, _ = c.score(cuda, encode_columns(inputs, cols, 4), 4)
        assert header["error"]["kind"] == "unavailable", header
        assert "cannot load: the AOTInductor package was compiled for cuda" in header["error"]["message"]
        header, scores = c.score(good, encode_columns(inputs, cols, 4), 4)
        assert header["ok"], header
    assert "Traceback" not in leaf.log(100_000)   # a refusal, not a crash


# -- on a GPU ---------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_package(format_repo, tmp_path_factory):
    """The session's model compiled for CUDA, on this machine's GPU."""
    format_repo.require("aoti")
    repo = tmp_path_factory.mktemp("cuda-repo")
    info = export(SOURCE, repo, MODEL, format_repo.schema, version="1", fmt="aoti", device="cuda")
    assert info.artifact.device == "cuda" and info.signature_hash == format_repo.infos[
        "torchscript"].signature_hash
    return repo, info


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["export", "aoti"])
def test_cuda_kinds_through_the_one_copy_path(format_repo, cuda_package, kind, rng):
    repo, aoti = cuda_package
    if kind == "aoti":
        path, info = str(repo / MODEL / "1" / "model.pt2"), aoti
    else:
        path, info = format_repo.path("export"), format_repo.infos["export"]
    device = torch.device("cuda")
    model = artifacts.load(path, info.artifact, device)
    builder = StagedTensors(device)
    reference = format_repo.path("torchscript")
    for sizes in MERGES:
        cols, parts = requests(info.inputs, sizes, rng, user_list(rng))
        with torch.inference_mode():
            features = builder.build(parts, info.inputs)
            assert all(t.device.type == "cuda" for t in features.values())
            got = to_scores(model(features), sum(sizes))
        want = np.concatenate([direct_scores(reference, info.inputs, c, n)
                               for c, n in zip(cols, sizes)])
        np.testing.assert_allclose(got, want, rtol=SCORE_RTOL, atol=SCORE_ATOL)


@pytest.mark.gpu
@needs_cuda
def test_cuda_leaf_serves_a_cuda_package(format_repo, cuda_package, process_runner, rng):
    repo, info = cuda_package
    leaf = process_runner.leaf(repo, models=[info.key], name="cuda", args=["--device", "cuda"])
    cols = random_columns(info.inputs, 16, rng)
    with Client(leaf.endpoint) as c:
        header, scores = c.score(info.key, encode_columns(info.inputs, cols, 16), 16)
    assert header["ok"], header
    np.testing.assert_allclose(scores, direct_scores(format_repo.path("torchscript"), info.inputs,
                                                     cols, 16), rtol=SCORE_RTOL, atol=SCORE_ATOL)
