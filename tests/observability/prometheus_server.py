"""A real Prometheus server for the tests: Debian's `prometheus` binary on a
loopback port of its own, its data in a temp directory, scraping every
second and evaluating rules every second."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

from tests.support.procs import free_tcp_port
from tests.support.services import ServerProcess, require, tail

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def require_prometheus() -> None:
    require(os.path.exists(BINARY) and os.path.exists(PROMTOOL),
            "prometheus/promtool are not installed (Debian: apt-get install prometheus); the "
            "observability tests run the rules in a real Prometheus")


class PrometheusServer(ServerProcess):
    name = "prometheus"
    poll_s = 0.2

    def __init__(self, tmp_path, targets: dict[str, list[str]], rule_files=()):
        super().__init__()
        require_prometheus()
        self.dir = os.fspath(tmp_path)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_tcp_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                             "scrape_timeout": "1s"},
                  "rule_files": [os.fspath(f) for f in rule_files],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                                     for job, hosts in targets.items()]}
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            json.dump(config, f)   # YAML's superset: no YAML library needed

    def _popen(self) -> subprocess.Popen:
        log = open(os.path.join(self.dir, "prometheus.log"), "ab")
        try:
            return subprocess.Popen(
                [BINARY, f"--config.file={self.config}",
                 f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        finally:
            log.close()

    def log(self) -> str:
        return tail(os.path.join(self.dir, "prometheus.log"))

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.status, r.read()

    def serving(self) -> bool:
        try:
            return self.get("/-/ready")[0] == 200
        except OSError:
            return False

    def api(self, path: str) -> dict:
        status, body = self.get("/api/v1/" + path)
        out = json.loads(body)
        assert out["status"] == "success", out
        return out["data"]


__all__ = ["BINARY", "PROMTOOL", "PrometheusServer", "require_prometheus"]
