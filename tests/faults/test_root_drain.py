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


def drain_cycles(process_runner, world, name: str, drive) -> list[dict]:
    """``drive``'s figures for CYCLES roots, each started and drained in turn."""
    leaves = spawn_leaves(process_runner, world)["ipc"]
    return [drive(spawn_root(process_runner, world, leaves, name=f"{name}-{cycle}"))
            for cycle in range(CYCLES)]


def test_sigterm_under_load_leaves_no_request_without_a_reply(world, process_runner):
    figures = drain_cycles(process_runner, world, "root", drive_through_drain)
    print(f"\nroot drains: {figures}")
    assert all(f["rc"] == 0 for f in figures), figures
    assert sum(f["lost"] + f["unwarned"] for f in figures) == 0, figures


def fire_through_the_end(root, clients: int = CLIENTS, every_s: float = 0.002) -> dict:
    """Clients that ignore `shutting_down` (a loop with no other root to go
    to) send a request every ``every_s`` from before SIGTERM until they see
    the root's process gone, then wait for the replies. Each request must
    get one: its scores, `shutting_down` from the root, or `unavailable`
    from the client for a request its connection closed on (or one sent
    while it had none) (rule `client.connection-lost`)."""
    conns = [ScoringClient(root.endpoint) for _ in range(clients)]
    sent: set = set()
    replies: dict = {}
    t_term = None
    try:
        i = 0
        while root.returncode is None:
            for client in conns:
                user, cands = REQUESTS[i % len(REQUESTS)]
                sent.add(client.submit(user, cands, models=["ctr@3"], deadline_ms=5000))
                i += 1
                while (res := client.receive(0)) is not None:
                    assert res.id not in replies, f"two replies to {res.id}"
                    replies[res.id] = res
            if t_term is None and len(replies) >= 50:
                root.signal(signal.SIGTERM)
                t_term = time.monotonic()
            assert t_term is None or time.monotonic() - t_term < 30, "the root did not exit"
            time.sleep(every_s)
        end = time.monotonic() + 15   # generous: the client owes each request one reply
        while len(replies) < len(sent) and time.monotonic() < end:
            for client in conns:
                while (res := client.receive(10)) is not None:
                    assert res.id not in replies, f"two replies to {res.id}"
                    replies[res.id] = res
        # And no second reply after that.
        for client in conns:
            assert client.receive(200) is None
    finally:
        for client in conns:
            client.close()
    kinds: dict[str, int] = {}
    for r in replies.values():
        kind = "ok" if r.ok else r.error["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"sent": len(sent), "kinds": kinds, "lost": len(sent - set(replies)),
            "rc": root.returncode}


def test_requests_sent_until_the_root_is_gone_each_get_one_reply(world, process_runner):
    figures = drain_cycles(process_runner, world, "root-end", fire_through_the_end)
    print(f"\nclients sending through the drain: {figures}")
    assert all(f["rc"] == 0 for f in figures), figures
    assert all(f["lost"] == 0 for f in figures), figures
    assert all(set(f["kinds"]) <= {"ok", "shutting_down", "unavailable"} for f in figures), figures
    assert all(f["kinds"].get("shutting_down", 0) > 0 for f in figures), figures
