"""A leaf's SIGTERM drain ends while traffic continues: the requests it refuses
(`shutting_down`) do not hold it open."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.models import encode_columns, random_columns
from tests.support.procs import Client

from .conftest import ENG_INPUTS

pytestmark = pytest.mark.slow

DRAIN_S = 3.0


def test_drain_ends_while_a_client_keeps_sending(process_runner, repo, rng):
    """A client that ignores `shutting_down` (no root in between to take the leaf
    out of rotation) keeps sending; the leaf still exits, within its drain timeout."""
    leaf = process_runner.leaf(repo.root, models=["eng@1"], name="drain-load",
                               args=["--max-wait-ms", "0", "--drain-timeout-s", str(DRAIN_S)])
    msg = encode_columns(ENG_INPUTS, random_columns(ENG_INPUTS, 16, rng), 16)
    kinds: dict[str, int] = {}
    sent = replied = 0
    with Client(leaf.endpoint) as c:
        def pump(seconds: float) -> None:
            nonlocal sent, replied
            end = time.monotonic() + seconds
            while time.monotonic() < end and leaf.returncode is None:
                c.send({"type": "score", "model": "eng@1", "rows": 16, "compression": "none"}, msg)
                sent += 1
                try:
                    header, _ = c.recv(timeout=1.0)
                except TimeoutError:
                    continue   # sent as the leaf closed its socket
                replied += 1
                kind = "ok" if header["ok"] else header["error"]["kind"]
                kinds[kind] = kinds.get(kind, 0) + 1
                time.sleep(0.005)
        pump(0.5)
        t0 = time.monotonic()
        leaf.signal()
        pump(DRAIN_S + 2.0)
        try:
            rc = leaf.wait(0.1)
        except subprocess.TimeoutExpired:
            pytest.fail(f"leaf still draining {DRAIN_S + 2.0:.0f} s after SIGTERM while a client "
                        f"kept sending ({kinds}):\n{leaf.log()}")
        took = time.monotonic() - t0
    print(f"\nleaf drain under load: sent {sent}, replied {replied} {kinds}, exited after "
          f"{took:.2f} s")
    assert rc == 0, leaf.log()
    assert kinds.get("shutting_down", 0) >= 1 and set(kinds) <= {"ok", "shutting_down"}, kinds
