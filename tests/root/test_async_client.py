"""The asyncio client keeps the one-reply rule of the synchronous one when
its root's connection drops (rule `client.connection-lost`): against a real
root, frozen so that nothing it read gets an answer, then killed."""
from __future__ import annotations

import asyncio
import signal

import numpy as np
import pytest

from rootproc.client import AsyncScoringClient
from tests.root.world import CANDIDATE_IDS, USER_IDS

from .conftest import leaves_running, spawn_root

pytestmark = pytest.mark.slow

IN_FLIGHT = 8


@pytest.fixture(scope="module")
def leaves(world, tmp_path_factory):
    with leaves_running(tmp_path_factory, world) as endpoints:
        yield endpoints["ipc"]


def test_requests_a_dropped_connection_carried_are_answered_unavailable_by_the_client(
        world, leaves, process_runner):
    root = spawn_root(process_runner, world, leaves, name="root-async")
    user, cands = int(USER_IDS[0]), np.asarray(CANDIDATE_IDS[:32])

    async def scenario():
        # A long client timeout: an answer must come from the drop, not from it.
        client = AsyncScoringClient(root.endpoint, timeout_ms=120_000)
        try:
            first = await client.score(user, cands, models=["ctr@3"], deadline_ms=30_000)
            assert first.ok and not first.errors, first.errors   # the connection is up
            root.signal(signal.SIGSTOP)
            waiting = [asyncio.ensure_future(client.score(user, cands, models=["ctr@3"]))
                       for _ in range(IN_FLIGHT)]
            await asyncio.sleep(0.5)   # sent, unread by the frozen root
            root.signal(signal.SIGKILL)
            lost = await asyncio.wait_for(asyncio.gather(*waiting), 60)
            after = await asyncio.wait_for(client.score(user, cands, models=["ctr@3"]), 60)
        finally:
            client.close()
        return lost, after

    lost, after = asyncio.run(scenario())
    assert len({r.id for r in lost}) == IN_FLIGHT
    for r in lost:
        assert not r.ok and r.error["kind"] == "unavailable" and r.error["from"] == "client", r
        assert "closed the connection before answering" in r.error["message"], r.error
    # Down and not back: not sent, answered at once.
    assert not after.ok and after.error["kind"] == "unavailable", after.error
    assert "not sent" in after.error["message"], after.error
