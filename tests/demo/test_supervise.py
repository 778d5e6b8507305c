"""rootproc/demo/supervise.py: supervisord that goes when its parent goes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.support.procs import REPO_ROOT
from tests.support.signals import alive


def minimal_config(tmp_path) -> str:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\nnodaemon=true\n"
                    f"logfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
                    f"childlogdir={tmp_path}\n")
    return str(conf)


def test_supervisord_does_not_start_for_a_parent_that_is_not_its_own(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rootproc.demo.supervise", "1", "-c",
                           minimal_config(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1 and "not starting supervisord" in done.stderr
    assert not (tmp_path / "supervisord.pid").exists()


def test_supervisord_stops_when_its_parent_is_killed(tmp_path):
    # The parent: starts supervisord through supervise, says its pid, waits.
    parent_code = ("import os, subprocess, sys, time\n"
                   "p = subprocess.Popen([sys.executable, '-m', 'rootproc.demo.supervise',\n"
                   "                      str(os.getpid()), '-c', sys.argv[1]])\n"
                   "print(p.pid, flush=True)\n"
                   "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code, minimal_config(tmp_path)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    supervisord = None
    try:
        supervisord = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not (tmp_path / "supervisord.pid").exists():
            assert time.monotonic() < deadline, "supervisord did not start"
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 30
        while alive([supervisord]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive([supervisord]), "supervisord outlived its parent"
        assert not (tmp_path / "supervisord.pid").exists()  # a clean exit removes it
        assert "received SIGTERM" in (tmp_path / "supervisord.log").read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        if supervisord is not None and alive([supervisord]):
            os.kill(supervisord, signal.SIGKILL)
