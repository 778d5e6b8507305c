"""Leaf process lifecycle: SIGTERM drain, metrics endpoint, command line."""
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from tests.support.models import direct_scores, encode_columns, random_columns
from tests.support.procs import REPO_ROOT, Client, free_tcp_port

from .conftest import ENG_INPUTS, SLOW_INPUTS

# TorchScript is what leaves serve; its deprecation notice is not this suite's concern.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_exits_zero(process_runner, repo, rng):
    leaf = process_runner.leaf(repo.root, models=["slow@1"], name="drain",
                               args=["--max-wait-ms", "0"])
    ipc_path = leaf.endpoint[len("ipc://"):]
    assert os.path.exists(ipc_path)
    batches = [random_columns(SLOW_INPUTS, 256, rng) for _ in range(10)]
    with Client(leaf.endpoint) as c:
        ids = [c.send({"type": "score", "model": "slow@1", "rows": 256},
                      encode_columns(SLOW_INPUTS, b, 256)) for b in batches]
        first, frames = c.recv(timeout=30)  # the leaf has read them all by now
        replies = {first["id"]: (first, frames)}
        leaf.signal()
        time.sleep(0.2)  # let the leaf's main thread run its signal handler
        # Sent after SIGTERM: refused with a reply, never silently dropped.
        late = c.send({"type": "score", "model": "slow@1", "rows": 256},
                      encode_columns(SLOW_INPUTS, batches[0], 256))
        for _ in range(len(ids)):
            header, frames = c.recv(timeout=30)
            replies[header["id"]] = (header, frames)
    assert set(replies) == set(ids) | {late}
    assert replies[late][0]["error"]["kind"] == "shutting_down"
    path = repo.models["slow@1"][0]
    for rid, cols in zip(ids, batches):
        header, frames = replies[rid]
        assert header["ok"], header
        np.testing.assert_allclose(np.frombuffer(frames[0], "<f4"),
                                   direct_scores(path, SLOW_INPUTS, cols, 256), rtol=1e-5)
    assert leaf.wait(30) == 0, leaf.log()
    assert not os.path.exists(ipc_path)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, line_start):
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start!r} in:\n{text}")


def test_metrics_endpoint(process_runner, repo, rng):
    port = free_tcp_port()
    leaf = process_runner.leaf(repo.root, models=["eng@1"], name="metrics",
                               args=["--metrics-port", str(port), "--metrics-addr", "127.0.0.1"])
    cols = random_columns(ENG_INPUTS, 10, rng)
    msg = encode_columns(ENG_INPUTS, cols, 10)
    with Client(leaf.endpoint) as c:
        for _ in range(3):
            assert c.score("eng@1", msg, 10)[0]["ok"]
        assert c.score("eng@1", msg, 11)[0]["error"]["kind"] == "bad_request"
        assert c.score("nope@2", msg, 10)[0]["error"]["kind"] == "unknown_model"
    text = scrape(port)
    assert metric(text, 'trimmer_leaf_requests_total{model="eng@1"}') == 4
    assert metric(text, 'trimmer_leaf_rows_total{model="eng@1"}') == 30
    assert metric(text, 'trimmer_leaf_errors_total{kind="bad_request"}') == 1
    assert metric(text, 'trimmer_leaf_errors_total{kind="unknown_model"}') == 1
    assert metric(text, "trimmer_leaf_received_bytes_total") >= 5 * len(msg)
    assert metric(text, 'trimmer_leaf_batch_rows_count{model="eng@1"}') == 3
    assert metric(text, 'trimmer_leaf_infer_seconds_count{model="eng@1"}') == 3
    assert metric(text, 'trimmer_leaf_decode_seconds_count{model="eng@1"}') == 3
    assert metric(text, 'trimmer_leaf_model_ready{model="eng@1"}') == 1


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "signatures.cli", "leaf", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_refuses_unknown_models_and_missing_options(repo, tmp_path):
    r = run_cli("--repo", str(repo.root), "--bind", f"ipc://{tmp_path}/x.ipc",
                "--model", "ctr@3", "--model", "ghost@1", "--model", "phantom")
    assert r.returncode == 2
    assert "not in model repository" in r.stderr
    assert "ghost@1" in r.stderr and "phantom" in r.stderr
    r = run_cli("--repo", str(repo.root))
    assert r.returncode == 2 and "--bind" in r.stderr
    (tmp_path / "leaf.json").write_text('{"repo": "x", "bogus": 1}')
    r = run_cli("--config", str(tmp_path / "leaf.json"), "--bind", "ipc:///tmp/nothing")
    assert r.returncode == 2 and "bogus" in r.stderr
    assert not list(tmp_path.glob("*.ipc"))


def test_config_file(process_runner, repo, tmp_path, rng):
    endpoint = process_runner.endpoint("conf")
    (tmp_path / "leaf.json").write_text(
        f'{{"repo": "{repo.root}", "models": "eng", "bind": "{endpoint}", "name": "from-file"}}')
    leaf = process_runner.spawn("conf", [sys.executable, "-m", "leafproc", "--config",
                                         str(tmp_path / "leaf.json")],
                                endpoint=endpoint, ipc_paths=[endpoint[len("ipc://"):]])
    pong = leaf.wait_ready()
    assert pong["name"] == "from-file"
    assert [m["model"] for m in pong["models"]] == ["eng@1"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_leaf_on_cuda_scores_equal_direct_call(process_runner, repo, rng):
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="cuda",
                               args=["--device", "cuda", "--max-wait-ms", "5"])
    from tests.support.procs import ping

    from .conftest import CTR_INPUTS
    assert ping(leaf.endpoint)["device"].startswith("cuda")
    path = repo.models["ctr@3"][0]
    with Client(leaf.endpoint) as c:
        for rows in (1, 33, 500):
            cols = random_columns(CTR_INPUTS, rows, rng)
            header, scores = c.score("ctr@3", encode_columns(CTR_INPUTS, cols, rows), rows)
            assert header["ok"], header
            np.testing.assert_allclose(scores, direct_scores(path, CTR_INPUTS, cols, rows),
                                       rtol=1e-5)


class ReadsUndeclared(torch.nn.Module):
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return features["not_in_signature"]


def test_model_failing_warmup_is_not_ready_and_answers_unavailable(process_runner, tmp_path, rng):
    from tests.support.models import spec, write_model
    inputs = [spec("x")]
    write_model(tmp_path / "repo", "broken", "1", inputs, module=ReadsUndeclared())
    leaf = process_runner.leaf(tmp_path / "repo", name="broken", ready=False)
    pong = leaf.wait_ready(ready=lambda p: any("error" in m for m in p["models"]))
    [m] = pong["models"]
    assert m["ready"] is False and "not_in_signature" in m["error"]
    cols = random_columns(inputs, 2, rng)
    with Client(leaf.endpoint) as c:
        header, _ = c.score("broken@1", encode_columns(inputs, cols, 2), 2)
    assert header["error"]["kind"] == "unavailable"


def test_runner_leaves_no_process_or_ipc_file(tmp_path, repo):
    from tests.support.procs import ProcessRunner
    runner = ProcessRunner(tmp_path, stop_timeout=2)
    leaf = runner.leaf(repo.root, models=["eng@1"], name="tidy")
    stubborn = runner.spawn("stubborn", [sys.executable, "-c",
                                         "import signal, time; signal.signal(signal.SIGTERM, "
                                         "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"])
    ipc_path = leaf.endpoint[len("ipc://"):]
    while "up" not in stubborn.log():
        time.sleep(0.05)
    runner.close()
    assert leaf.returncode == 0  # drained cleanly on SIGTERM
    assert stubborn.returncode == -9  # ignored SIGTERM, so it was killed
    assert not os.path.exists(ipc_path)
