"""A root's SIGTERM drain answers every request it was sent: those in flight
with their scores, those already queued in its socket and those that arrive
until its clients have heard, `shutting_down`."""
from __future__ import annotations

import signal
import time

import pytest

from rootproc.client.scoring_client import ScoringClient
from tests.root.conftest import spawn_leaves, spawn_root

from .conftest import REQUESTS

pytestmark = pytest.mark.slow

CYCLES = 3
CLIENTS = 4
EVERY_S = 0.02


def drive_through_drain(root) -> dict:
    """CLIENTS clients, each sending a request every EVERY_S whatever the
    replies, until its own first `shutting_down` (as a client with other roots
    to go to would); SIGTERM once traffic flows; then replies are collected
    until the root has exited and a second more."""
    clients = [ScoringClient(root.endpoint) for _ in range(CLIENTS)]
    sent, replies = {}, {}      # request id -> monotonic time sent
    stopped = [False] * CLIENTS
    t_term = t_exit = None
    try:
        i, next_send = 0, time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_send and t_exit is None:
                for k, client in enumerate(clients):
                    if not stopped[k]:
                        user, cands = REQUESTS[i % len(REQUESTS)]
                        sent[client.submit(user, cands, models=["ctr@3", "eng@1"],
                                           deadline_ms=5000)] = now
                        i += 1
                next_send = now + EVERY_S
            for k, client in enumerate(clients):
                while (res := client.receive(0)) is not None:
                    assert res.id not in replies, f"two replies to {res.id}"
                    replies[res.id] = res
                    if not res.ok and res.error["kind"] == "shutting_down":
                        stopped[k] = True
            time.sleep(0.0005)
            if t_term is None and len(replies) >= 100:
                root.signal(signal.SIGTERM)
                t_term = now
            if t_exit is None and root.returncode is not None:
                t_exit = now
            if t_exit is not None and (now - t_exit > 1.0 or len(replies) == len(sent)):
                break
            assert t_term is None or now - t_term < 20, "the root did not exit"
    finally:
        for client in clients:
            client.close()
    kinds = [r.error["kind"] for r in replies.values() if not r.ok]
    assert set(kinds) <= {"shutting_down"}, kinds
    assert all(not r.errors for r in replies.values() if r.ok)
    # lost: sent while the root ran and never answered; unwarned: clients the
    # drain never told (they would go on sending into a socket nobody reads).
    return {"sent": len(sent), "answered": sum(r.ok for r in replies.values()),
            "refused": len(kinds), "lost": len(set(sent) - set(replies)),
            "unwarned": stopped.count(False), "rc": root.returncode,
            "drain_s": round(t_exit - t_term, 3)}


def test_sigterm_under_load_leaves_no_request_without_a_reply(world, process_runner):
    leaves = spawn_leaves(process_runner, world)["ipc"]
    figures = []
    for cycle in range(CYCLES):
        root = spawn_root(process_runner, world, leaves, name=f"root-{cycle}")
        figures.append(drive_through_drain(root))
    print(f"\nroot drains: {figures}")
    assert all(f["rc"] == 0 for f in figures), figures
    assert sum(f["lost"] + f["unwarned"] for f in figures) == 0, figures
