"""Real processes for integration tests, and a small zmq client.

    runner = ProcessRunner(tmp_path)            # or the `process_runner` fixture
    leaf = runner.leaf(repo, models=["ctr@3"])  # spawned, answering ping, models ready
    with Client(leaf.endpoint) as c:
        header, frames = c.request({"type": "score", ...}, batch)
    runner.close()                              # SIGTERM, wait, SIGKILL; ipc files removed

Every process gets a unique endpoint under tmp_path (ipc) or a free
127.0.0.1 port (tcp); its stdout and stderr go to ``<tmp_path>/<name>.log``,
whose tail is included in every failure message.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import zmq

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IPC_PATH_MAX = 100  # sun_path holds 107 bytes plus NUL
# Every process a ProcessRunner spawned in this test session, by pid: what a
# test may call its own (another Feature Trimmer on the machine is not).
STARTED_PIDS: set[int] = set()


def processes_mentioning(text: str) -> list[str]:
    """'pid: cmdline' of every other process whose command line contains ``text``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            out.append(f"{pid}: {cmdline}")
    return out


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """A DEALER socket speaking the envelope protocol (JSON header + raw frames)."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self._ids = itertools.count()

    def send(self, header: dict, *frames) -> str:
        header = {"v": 1, **header}
        header.setdefault("id", f"c{next(self._ids)}-{uuid.uuid4().hex[:6]}")
        self.sock.send_multipart([orjson.dumps(header), *frames], copy=False)
        return header["id"]

    def send_raw(self, *frames) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 10.0) -> tuple[dict, list[bytes]]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply within {timeout}s")
        frames = self.sock.recv_multipart()
        return orjson.loads(frames[0]), frames[1:]

    def request(self, header: dict, *frames, timeout: float = 10.0):
        self.send(header, *frames)
        return self.recv(timeout)

    def score(self, model: str, batch, rows: int, timeout: float = 10.0, **extra):
        """(reply header, float32 scores or None)."""
        header, frames = self.request({"type": "score", "model": model, "rows": rows,
                                       "compression": "none", **extra}, batch, timeout=timeout)
        scores = np.frombuffer(frames[0], dtype="<f4") if header.get("ok") and frames else None
        return header, scores

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ping(endpoint: str, timeout: float = 1.0) -> dict | None:
    """The pong, or None when nothing answered within ``timeout``."""
    with Client(endpoint) as c:
        try:
            header, _ = c.request({"type": "ping"}, timeout=timeout)
        except TimeoutError:
            return None
    return header


def all_models_ready(pong: dict) -> bool:
    models = pong.get("models", [])
    failed = [m for m in models if m.get("error")]
    if failed:
        raise RuntimeError(f"models failed to load: {failed}")
    return all(m.get("ready") for m in models)


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], log_path: str, endpoint: str | None,
                 ipc_paths: list[str], env: dict | None = None, cwd: str = REPO_ROOT):
        self.name, self.argv, self.log_path, self.endpoint = name, argv, log_path, endpoint
        self.ipc_paths = ipc_paths
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.poll()

    def log(self, tail: int = 4000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = 60.0, ready=all_models_ready) -> dict:
        """Poll ping until ``ready(pong)``; the last pong."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            pong = ping(self.endpoint, timeout=0.5)
            if pong is not None and ready(pong):
                return pong
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()}")

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class ProcessRunner:
    def __init__(self, tmp_path, stop_timeout: float = 15.0):
        self.tmp_path = os.fspath(tmp_path)
        self.stop_timeout = stop_timeout  # SIGTERM to SIGKILL
        self.procs: list[ManagedProcess] = []
        self._short_dir: str | None = None

    def _ipc_dir(self) -> str:
        if len(self.tmp_path) + 40 <= IPC_PATH_MAX:
            return self.tmp_path
        if self._short_dir is None:  # deep tmp_path: ipc paths must fit sun_path
            self._short_dir = tempfile.mkdtemp(prefix="trim-", dir="/tmp")
        return self._short_dir

    def endpoint(self, name: str, transport: str = "ipc") -> str:
        if transport == "tcp":
            return f"tcp://127.0.0.1:{free_tcp_port()}"
        return f"ipc://{self._ipc_dir()}/{name}-{uuid.uuid4().hex[:8]}.ipc"

    def spawn(self, name: str, argv: list[str], *, endpoint: str | None = None,
              ipc_paths: list[str] = (), env: dict | None = None) -> ManagedProcess:
        p = ManagedProcess(name, argv, os.path.join(self.tmp_path, f"{name}.log"), endpoint,
                           list(ipc_paths), env)
        STARTED_PIDS.add(p.pid)
        self.procs.append(p)
        return p

    def leaf(self, repo, *, models=(), name: str = "leaf-0", transport: str = "ipc",
             bind: str | None = None, args=(), ready: bool = True,
             timeout: float = 60.0) -> ManagedProcess:
        """A `python -m leafproc` process; with ``ready`` it answers ping with every model ready."""
        endpoint = bind or self.endpoint(name, transport)
        argv = [sys.executable, "-m", "leafproc", "--repo", os.fspath(repo), "--bind", endpoint,
                "--name", name, "--threads", "1"]
        for m in models:
            argv += ["--model", m]
        argv += list(args)
        ipc = [endpoint[len("ipc://"):]] if endpoint.startswith("ipc://") else []
        p = self.spawn(name, argv, endpoint=endpoint, ipc_paths=ipc)
        if ready:
            p.wait_ready(timeout)
        return p

    def close(self) -> None:
        errors = []
        for p in reversed(self.procs):
            try:
                p.stop(self.stop_timeout)
            except Exception as exc:  # keep stopping the others
                errors.append(f"{p.name}: {exc}")
        for p in self.procs:
            for path in p.ipc_paths:
                if os.path.exists(path):  # a killed process leaves its socket file
                    os.unlink(path)
        self.procs.clear()
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))
