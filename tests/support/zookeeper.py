"""A real ZooKeeper server for tests: standalone, its own free port and data
directory, stopped after.

    with ZooKeeperServer(tmp_path) as server:
        server.address("cluster-a")        # zk://127.0.0.1:PORT/cluster-a
        server.kill(); server.start()      # same port and data: a crash and a restart

It runs Debian's ``zookeeper`` package (its jars in /usr/share/java) on the
Java found on PATH, with a short tick so that session timeouts of a second
or two are allowed, four-letter-word commands off and the admin server off.
Without the package the tests that need it are skipped, saying so, unless
TRIMMER_TEST_SERVICES=required, when they fail instead: CI must not pass by
skipping them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from tests.support.procs import free_tcp_port
from tests.support.services import ServerProcess, require, tail

INSTALLED = "/usr/share/zookeeper/bin/zkServer.sh"
JAR = "/usr/share/java/zookeeper.jar"
MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
TICK_MS = 250


def require_zookeeper() -> str:
    java = shutil.which("java")
    require(bool(os.path.exists(INSTALLED) and os.path.exists(JAR) and java),
            "ZooKeeper is not installed (Debian: apt-get install zookeeper; it brings Java) "
            "and the fleet config store tests need a real server")
    assert java is not None
    return java


class ZooKeeperServer(ServerProcess):
    name = "ZooKeeper"
    poll_s = 0.1

    def __init__(self, tmp_path, host: str = "127.0.0.1", port: int | None = None):
        super().__init__()
        self.java = require_zookeeper()
        # Writes without a credential are refused unless asked for (issue 25):
        # the tests' roots, leaves and commands write open nodes on purpose;
        # a test of the refusal unsets this.
        os.environ.setdefault("TRIMMER_ZK_INSECURE", "1")
        self.dir = os.fspath(tmp_path)
        self.host = host
        self.port = port or free_tcp_port()
        self._log = None

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def address(self, chroot: str | None = None) -> str:
        return f"zk://{self.hosts}/{chroot or 't-' + uuid.uuid4().hex[:10]}"

    def _write_config(self) -> str:
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        cfg = os.path.join(self.dir, "zoo.cfg")
        with open(cfg, "w") as f:
            f.write(f"tickTime={TICK_MS}\ndataDir={data}\nclientPort={self.port}\n"
                    f"clientPortAddress={self.host}\nmaxClientCnxns=0\n"
                    "minSessionTimeout=500\nmaxSessionTimeout=60000\n"
                    "4lw.commands.whitelist=\nadmin.enableServer=false\n"
                    "snapCount=100000\nautopurge.purgeInterval=0\n")
        with open(os.path.join(self.dir, "log4j.properties"), "w") as f:
            f.write("log4j.rootLogger=WARN, FILE\nlog4j.appender.FILE=org.apache.log4j.FileAppender\n"
                    f"log4j.appender.FILE.File={self.dir}/zookeeper.log\n"
                    "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n"
                    "log4j.appender.FILE.layout.ConversionPattern=%d %-5p %m%n\n")
        return cfg

    def _popen(self) -> subprocess.Popen:
        cfg = self._write_config()
        self._log = open(os.path.join(self.dir, "stdout.log"), "ab")
        return subprocess.Popen(
            [self.java, "-Xmx192m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Dzookeeper.admin.enableServer=false", "-Dzookeeper.jmx.log4j.disable=true",
             "-cp", f"{self.dir}:{JAR}", MAIN, cfg],
            stdout=self._log, stderr=subprocess.STDOUT)

    def serving(self) -> bool:
        from kazoo.client import KazooClient
        zk = KazooClient(hosts=self.hosts, timeout=2.0)
        try:
            zk.start(timeout=1.0)
            return True
        except Exception:
            return False
        finally:
            zk.stop()
            zk.close()

    def _end(self, sig) -> None:
        super()._end(sig)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return "".join(tail(os.path.join(self.dir, name)) for name in ("stdout.log", "zookeeper.log"))


__all__ = ["ZooKeeperServer", "require_zookeeper"]
