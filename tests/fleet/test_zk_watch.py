"""A follower's watch on its stage node stays armed whatever the timing
(signatures/configstore/zookeeper/watch.py), against a real ZooKeeper.

A watch can fire while the call that sets it is still returning (the
stage changed right after the watch was set). The wake from that change is
not lost (the follower looks), and the watch must be set again for the
change after it: otherwise the follower hears of nothing more until its
30 s recheck, and a root or leaf sits on an old config that long."""
from __future__ import annotations

import threading
import time

from signatures.configstore.zookeeper.ensemble import Ensemble
from signatures.configstore.zookeeper.watch import Watched
from tests.fleet.test_zk_store import FAST

RECHECK_S = 60.0   # far longer than any wait here: only the watch can wake the follower


def test_a_change_while_the_watch_is_being_set_leaves_it_armed_for_the_next(zk_server):
    writer, follower_zk = Ensemble(zk_server.address(), FAST), Ensemble(zk_server.address(), FAST)
    node = writer.path("stages", "watched")
    writer.client().ensure_path(node)
    watched = Watched(follower_zk, node, RECHECK_S)
    fired = threading.Event()
    heard = watched._fired
    watched._fired = lambda event: (heard(event), fired.set())
    real_call = follower_zk.call
    first = [True]

    def call(what, make):
        got = real_call(what, make)   # the watch is set...
        if what == "watch the stage" and first[0]:
            first[0] = False          # ...and the stage changes before the caller goes on
            writer.client().set(node, b"change 1")
            assert fired.wait(30), "the watch never fired"
        return got

    try:
        follower_zk.call = call
        assert watched.wait(5) is True       # change 1 (and the first look) is seen
        assert watched.wait(0.05) is False   # nothing new yet
        writer.client().set(node, b"change 2")
        t0 = time.monotonic()
        woke = False
        while not woke and time.monotonic() - t0 < 30:
            woke = watched.wait(1.0)
        assert woke, "change 2 was never heard of: the watch was not set again"
    finally:
        watched.close()
        writer.close()
        follower_zk.close()
