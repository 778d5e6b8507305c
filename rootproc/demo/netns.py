"""A remote host on this machine: a network namespace behind a shaped link.

On one node the root reaches its leaves over ipc, and the root->leaf network,
the thing trimming saves, never shows. ``RemoteHost`` makes a second "host":
a namespace ``trim-leaf-<pid>[-<n>]`` joined to the default namespace by a
veth pair on a private /30 in 10.213.0.0/16, with ``tc`` limiting the
bandwidth (tbf) and optionally adding delay (netem) on both ends, so leaves
run inside it behind a link like a real one::

    with RemoteHost(rate="200mbit", delay_ms=0.5) as host:
        leaf = host.spawn([sys.executable, "-m", "leafproc", ..., "--bind",
                           host.endpoint(5555)], log_path)
        ...  # a root in the default namespace connects to host.endpoint(5555)

Needs root and iproute2. Traffic goes only to the pair's own addresses.
``down`` (also on ``__exit__``) stops what was spawned inside and deletes the
namespace and the veth pair; ``cleanup_stale`` removes what a crashed run of
this module left behind, recognised by its name prefix and a dead pid.
"""
from __future__ import annotations

import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import time

from _trim.transport.process import pid_alive

NS_PREFIX = "trim-leaf-"
VETH_PREFIX = "trl"           # trl<pid>x<n>h (default namespace) / ...l (leaf side)
SUBNET = ipaddress.IPv4Network("10.213.0.0/16")
LOCK_PATH = "/tmp/trim-netns.lock"  # serialises choosing a free /30 between processes
STOP_WAIT_S = 15.0
_counter = itertools.count()

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?(?:/s)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_rate(text: str) -> int:
    """Bits per second from ``200mbit``, ``1gbit``, ``200Mbit/s``, ``1G``
    (``bit``/``bps`` both mean bits here, as they do to ``tc``)."""
    m = _RATE.match(str(text))
    if not m:
        raise ValueError(f"bandwidth {text!r}: expected a rate like 200mbit or 1gbit")
    bps = int(float(m.group(1)) * _SCALE[m.group(2).lower()])
    if not 1_000_000 <= bps <= 100 * 10**9:
        raise ValueError(f"bandwidth {text!r}: must be between 1mbit and 100gbit")
    return bps


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def veths() -> list[str]:
    """This module's veth ends in the default namespace."""
    out = _run("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if re.fullmatch(rf"{VETH_PREFIX}\d+x\d+[hl]", n)]


def owner_pid(name: str) -> int | None:
    """The pid of the process that made namespace or veth ``name`` (None: not one of ours)."""
    m = re.match(rf"(?:{re.escape(NS_PREFIX)}|{VETH_PREFIX})(\d+)", name)
    return int(m.group(1)) if m else None


def _pids_in(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_all_in(ns: str, wait_s: float) -> None:
    """SIGTERM everything in ``ns``, then SIGKILL what is still there after ``wait_s``."""
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5.0)):
        pids = _pids_in(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _pids_in(ns) and time.monotonic() < deadline:
            time.sleep(0.05)


def cleanup_stale() -> list[str]:
    """Delete namespaces and veths of this module whose creating process is gone
    (a crashed or killed run); the names removed."""
    removed = []
    for ns in namespaces():
        pid = owner_pid(ns)
        if ns.startswith(NS_PREFIX) and pid is not None and not pid_alive(pid):
            _kill_all_in(ns, 2.0)
            _run("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    for veth in veths():
        pid = owner_pid(veth)
        if pid is not None and not pid_alive(pid):
            _run("ip", "link", "del", veth, check=False)
            removed.append(veth)
    return removed


def _used_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    return {ipaddress.ip_interface(m).ip for m in re.findall(r"inet (\S+)", out)}


class RemoteHost:
    """A namespace behind a veth pair, shaped to ``rate`` (None: unshaped) with
    ``delay_ms`` one-way delay each way."""

    def __init__(self, rate: str | int | None = "200mbit", delay_ms: float = 0.0):
        self.rate_bps = None if rate is None else (rate if isinstance(rate, int) else parse_rate(rate))
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.delay_ms = delay_ms
        n = next(_counter)
        pid = os.getpid()
        self.name = f"{NS_PREFIX}{pid}" + (f"-{n}" if n else "")
        self.veth_host, self.veth_leaf = f"{VETH_PREFIX}{pid}x{n}h", f"{VETH_PREFIX}{pid}x{n}l"
        self.host_address: str | None = None
        self.address: str | None = None
        self.procs: list[subprocess.Popen] = []
        self._logs: list = []
        self._made = False

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.address}:{port}"

    def up(self) -> RemoteHost:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        cleanup_stale()
        try:
            with open(LOCK_PATH, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                net = self._free_subnet()
                host, leaf = list(net.hosts())
                _run("ip", "netns", "add", self.name)
                self._made = True
                _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_leaf)
                _run("ip", "link", "set", self.veth_leaf, "netns", self.name)
                _run("ip", "addr", "add", f"{host}/30", "dev", self.veth_host)
                _run("ip", "-n", self.name, "addr", "add", f"{leaf}/30", "dev", self.veth_leaf)
                self.host_address, self.address = str(host), str(leaf)
            for args in ((self.veth_host,), ("-n", self.name, self.veth_leaf)):
                *ns, dev = args
                _run("ip", *ns, "link", "set", dev, "up")
                self._shape(list(ns), dev)
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise
        return self

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = _used_addresses()
        nets = list(SUBNET.subnets(new_prefix=30))
        start = os.getpid() % len(nets)  # concurrent runs rarely even look at the same /30
        for net in nets[start:] + nets[:start]:
            if not used & set(net):
                return net
        raise RuntimeError(f"no free /30 left in {SUBNET}")

    def _shape(self, ns: list[str], dev: str) -> None:
        tc = ["tc", *ns, "qdisc", "add", "dev", dev]
        parent = ["root"]
        if self.delay_ms:
            done = _run(*tc, "root", "handle", "1:", "netem", "delay", f"{self.delay_ms}ms",
                        "limit", "100000", check=False)
            if done.returncode != 0:
                raise RuntimeError(f"delay_ms={self.delay_ms} needs the netem qdisc, which this kernel "
                                   f"does not offer (CONFIG_NET_SCH_NETEM): {done.stderr.strip()}")
            parent = ["parent", "1:1"]
        if self.rate_bps:
            # burst: at least 10 ms of traffic and a full GSO segment, so that
            # the shaper, not its timer granularity, sets the rate; the queue
            # holds 100 ms, enough that TCP (not drops) paces the sender.
            burst = max(self.rate_bps // 8 // 100, 128 * 1024)
            _run(*tc, *parent, "handle", "10:", "tbf", "rate", f"{self.rate_bps}bit",
                 "burst", str(burst), "latency", "100ms")

    def qdiscs(self) -> str:
        """``tc qdisc show`` for both ends, for reports and checks."""
        return (_run("tc", "qdisc", "show", "dev", self.veth_host).stdout
                + _run("tc", "-n", self.name, "qdisc", "show", "dev", self.veth_leaf).stdout)

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def spawn(self, argv: list[str], log_path: str | os.PathLike, env: dict | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.Popen:
        log = open(log_path, "ab")
        self._logs.append(log)
        proc = subprocess.Popen(self.exec_argv(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.procs.append(proc)
        return proc

    def down(self) -> None:
        """Stop what was spawned inside (SIGTERM, then SIGKILL), delete the
        namespace and the veth pair. Safe to call twice."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._made:
            _kill_all_in(self.name, STOP_WAIT_S)  # anything else started in it
            _run("ip", "netns", "del", self.name, check=False)
            self._made = False
        # Deleting the namespace destroys the pair through its inside end;
        # this covers a failure before that end was moved in.
        if self.veth_host in veths():
            _run("ip", "link", "del", self.veth_host, check=False)

    def __enter__(self) -> RemoteHost:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def __repr__(self) -> str:
        rate = f"{self.rate_bps / 1e6:g} Mbit/s" if self.rate_bps else "unshaped"
        return f"RemoteHost({self.name}, {self.address}, {rate}, delay {self.delay_ms} ms)"

