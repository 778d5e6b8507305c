"""Secure by default: metrics on loopback unless told otherwise, no
unauthenticated tcp bind on a reachable address unless the settings say
``insecure``, and ipc socket files only their owner and group may connect to."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.root.world import root_config, write_root_config
from tests.support.procs import free_tcp_port

from .conftest import wait_for

pytestmark = pytest.mark.slow


def listening_address(port: int) -> str | None:
    """The local address of the TCP socket listening on ``port``, from /proc."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                if len(host) == 8:
                    return ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
                return "::" if set(host) == {"0"} else host
    return None


def start_root(runner, world, leaf_ep, name, **overrides):
    bind = overrides.pop("bind", None) or runner.endpoint(name)
    cfg = root_config(world, {"leaf-0": leaf_ep}, bind, name=name, **overrides)
    path = write_root_config(os.path.join(runner.tmp_path, f"{name}.json"), cfg)
    ipc = [bind[len("ipc://"):]] if bind.startswith("ipc://") else []
    return runner.spawn(name, [sys.executable, "-m", "rootproc", "--config", path],
                        endpoint=bind, ipc_paths=ipc), path


def test_metrics_bind_loopback_unless_told_otherwise(world, process_runner):
    leaf_port = free_tcp_port()
    leaf = process_runner.leaf(world["repo"], models=["ctr@3"], name="leaf-0",
                               args=["--metrics-port", str(leaf_port)])
    root_port = free_tcp_port()
    root, _ = start_root(process_runner, world, leaf.endpoint, "root", metrics_port=root_port)
    root.wait_ready(30, ready=lambda p: True)
    assert wait_for("the root's metrics", lambda: listening_address(root_port)) == "127.0.0.1"
    assert listening_address(leaf_port) == "127.0.0.1"
    # An explicit address is used as given, and said loudly when reachable from elsewhere.
    wide_port = free_tcp_port()
    wide, _ = start_root(process_runner, world, leaf.endpoint, "root-wide", metrics_port=wide_port,
                         metrics_addr="0.0.0.0")
    wide.wait_ready(30, ready=lambda p: True)
    assert wait_for("the wide metrics", lambda: listening_address(wide_port)) == "0.0.0.0"
    assert "WARNING" in wide.log() and "metrics" in wide.log() and "0.0.0.0" in wide.log()


def test_an_unauthenticated_reachable_tcp_bind_needs_insecure(world, process_runner, tmp_path):
    leaf = process_runner.leaf(world["repo"], models=["ctr@3"], name="leaf-0")
    port = free_tcp_port()
    bind = f"tcp://0.0.0.0:{port}"
    cfg = root_config(world, {"leaf-0": leaf.endpoint}, bind, name="root-open")
    path = write_root_config(tmp_path / "open.json", cfg)
    done = subprocess.run([sys.executable, "-m", "rootproc", "--config", path],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert bind in done.stderr and "insecure" in done.stderr and "curve.authorized" in done.stderr
    # Any client key ("*") encrypts but authenticates nobody: the same.
    keys = tmp_path / "keys"
    out = subprocess.run([sys.executable, "-m", "signatures.cli", "keys", "generate",
                          str(keys / "root")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out
    cfg["curve"] = {"secret_key": str(keys / "root.key_secret"), "authorized": "*"}
    path = write_root_config(tmp_path / "any.json", cfg)
    done = subprocess.run([sys.executable, "-m", "rootproc", "--config", path],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "insecure" in done.stderr, done
    # Said in the settings: it starts, and says so at every start.
    root, _ = start_root(process_runner, world, leaf.endpoint, "root-insecure", bind=bind,
                         insecure=True)
    root.endpoint = f"tcp://127.0.0.1:{port}"
    root.wait_ready(30, ready=lambda p: True)
    assert "INSECURE" in root.log() and bind in root.log()

    leaf_bind = f"tcp://0.0.0.0:{free_tcp_port()}"
    done = subprocess.run([sys.executable, "-m", "leafproc", "--repo", world["repo"],
                           "--model", "ctr@3", "--bind", leaf_bind],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert leaf_bind in done.stderr and "insecure" in done.stderr, done.stderr
    loose = process_runner.leaf(world["repo"], models=["ctr@3"], name="leaf-insecure",
                                bind=leaf_bind, args=["--insecure"], ready=False)
    loose.endpoint = leaf_bind.replace("0.0.0.0", "127.0.0.1")
    loose.wait_ready(60)
    assert "INSECURE" in loose.log()


def test_ipc_socket_files_admit_owner_and_group_only(world, process_runner):
    old = os.umask(0)   # whatever the umask, the mode is the documented one
    try:
        leaf = process_runner.leaf(world["repo"], models=["ctr@3"], name="leaf-0")
        root, _ = start_root(process_runner, world, leaf.endpoint, "root")
    finally:
        os.umask(old)
    root.wait_ready(30, ready=lambda p: True)
    for proc in (leaf, root):
        mode = stat.S_IMODE(os.stat(proc.endpoint[len("ipc://"):]).st_mode)
        assert mode == 0o660, f"{proc.name}: {oct(mode)}"
