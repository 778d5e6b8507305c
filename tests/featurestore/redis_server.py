"""A real redis-server for tests: its own free port and directory, no persistence, stopped after.

    with RedisServer(tmp_path) as server:
        server.url("ns")      # redis://127.0.0.1:PORT/0?namespace=ns
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

from tests.support.procs import free_tcp_port
from tests.support.services import ServerProcess, require, tail

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer(ServerProcess):
    name = "redis-server"
    poll_s = 0.02

    def __init__(self, tmp_path, password: str | None = None):
        super().__init__()
        require(os.path.exists(BINARY), "redis-server is not installed (Debian: apt-get install "
                "redis-server); the Redis feature store tests need a real server")
        self.dir = os.fspath(tmp_path)
        self.port = free_tcp_port()
        self.password = password

    def url(self, namespace: str = "features", db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}?namespace={namespace}"

    def _popen(self) -> subprocess.Popen:
        # It loads dump.rdb if `save` wrote one.
        argv = [BINARY, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--logfile", os.path.join(self.dir, "redis.log"), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def serving(self) -> bool:
        return self.command("PING") == b"+PONG"   # not -LOADING: the dump is read

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

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets and answers nothing (a stalled server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def unread_bytes(self) -> int:
        """Bytes clients have sent that the server has not read yet (its
        connections' receive queues, /proc/net/tcp): while it is paused, a
        command waiting for it."""
        total = 0
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port == self.port and fields[3] == "01":   # ESTABLISHED, server side
                    total += int(fields[4].split(":")[1], 16)
        return total

    def log(self) -> str:
        return tail(os.path.join(self.dir, "redis.log"))
