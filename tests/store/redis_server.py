"""A real redis-server for tests: its own free port and directory, no persistence, stopped after.

    server = RedisServer(tmp_path).start()
    server.url("ns")          # redis://127.0.0.1:PORT/0?namespace=ns
    server.kill(); server.start()   # the same port and directory: a restart

Without the redis-server binary (Debian's ``redis-server`` package) the
tests that need it are skipped, saying so, unless TRIMMER_TEST_SERVICES=required,
when they fail instead: CI must not pass by skipping them.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.support.procs import free_tcp_port

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> str:
    if os.path.exists(BINARY):
        return BINARY
    reason = ("redis-server is not installed (Debian: apt-get install redis-server); "
              "the Redis feature store tests need a real server")
    if os.environ.get("TRIMMER_TEST_SERVICES") == "required":
        pytest.fail(reason + " and TRIMMER_TEST_SERVICES=required")
    pytest.skip(reason)


class RedisServer:
    def __init__(self, tmp_path, password: str | None = None):
        self.binary = require_redis_server()
        self.dir = os.fspath(tmp_path)
        self.port = free_tcp_port()
        self.password = password
        self.proc: subprocess.Popen | None = None

    def url(self, namespace: str = "features", db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}?namespace={namespace}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart) the server; it loads dump.rdb if `save` wrote one."""
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--logfile", os.path.join(self.dir, "redis.log"), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self.command("PING") == b"+PONG":   # not -LOADING: the dump is read
                return self
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} not up after {timeout}s: {self.log()}")

    def command(self, *args: str) -> bytes | None:
        """One inline command's first reply line (b"+OK", b"-ERR ..."), None if unreachable."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall((" ".join(args) + "\r\n").encode())
                return s.recv(4096).split(b"\r\n")[0]
        except OSError:
            return None

    def save(self) -> None:
        """Write dump.rdb, which a restart loads: the data outlives a kill."""
        reply = self.command("SAVE")
        assert reply == b"+OK", reply

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets and answers nothing (a stalled server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""
