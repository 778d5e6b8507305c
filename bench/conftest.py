"""The benches import their helpers (scenarios.py, quick.py, ...) by name, and
each bench module must leave the machine as it found it: after a module, no
process this one started is still running, no shared-memory segment of ours
is left in /dev/shm, no socket file under this session's temporary
directory, no network namespace or veth of ours (test_network_bench.py). A
module that leaves one fails (an error in its teardown), in `make bench` and
in `make test`'s quick pass alike."""
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _trim.transport.shm import owner_pid  # noqa: E402
from rootproc.demo import netns  # noqa: E402
from tests.support.procs import STARTED_PIDS  # noqa: E402
from tests.support.signals import alive, socket_files  # noqa: E402

SHM_DIR = "/dev/shm"


def descendants(pid: int) -> set[int]:
    """Every living (not zombie) process below ``pid``."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return alive(out)


def our_segments() -> set[str]:
    """Trimmer segments owned by this process or one a bench started."""
    ours = STARTED_PIDS | {os.getpid()}
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith("trimmer-") and owner_pid(n) in ours}


def our_links() -> list[str]:
    """Network namespaces and veths this process made (rootproc/demo/netns.py)."""
    if shutil.which("ip") is None:
        return []
    return [n for n in netns.namespaces() + netns.veths() if netns.owner_pid(n) == os.getpid()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture(scope="module", autouse=True)
def left_as_found(tmp_path_factory):
    before = our_segments()
    yield
    problems = []
    procs = descendants(os.getpid())
    if procs:
        problems.append("processes still running: " + "; ".join(
            f"{p}: {cmdline(p)}" for p in sorted(procs)))
    segments = our_segments() - before
    if segments:
        problems.append(f"segments left in {SHM_DIR}: {sorted(segments)}")
    sockets = socket_files(tmp_path_factory.getbasetemp())
    if sockets:
        problems.append(f"socket files left: {[str(s) for s in sockets]}")
    links = our_links()
    if links:
        problems.append(f"network namespaces or veths left: {links}")
    assert not problems, "the bench left behind " + " and ".join(problems)
