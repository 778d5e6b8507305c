"""`LeafPool.reconcile` and `wanted_leaves`: which links a config keeps, adds and retires.
Real zmq sockets; nothing listens on the endpoints, which only a pong would need."""
from __future__ import annotations

import pytest
import zmq

from rootproc.leaves.replicas import LeafPool
from rootproc.leaves.wanted import wanted_leaves
from rootproc.rollout.installed import ActiveConfig
from rootproc.settings import LeafSpec


def config(leaves: dict) -> ActiveConfig:
    """leaf name -> (endpoint or None, versions)."""
    return ActiveConfig.from_bundle({"id": "b", "models": {}, "leaves": {
        name: {"endpoint": ep, "current": list(models)} for name, (ep, models) in leaves.items()}})


@pytest.fixture
def ctx():
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.term()


def keys(links) -> set:
    return {(link.name, link.endpoint) for link in links}


def test_config_file_wins_and_is_never_retired(ctx, tmp_path):
    own = (LeafSpec("leaf-0", (f"ipc://{tmp_path}/own",), compression="lz4"),)
    active = config({"leaf-0": (f"ipc://{tmp_path}/bundle", ["ctr@3"])})
    pool = LeafPool(ctx, wanted_leaves(own, active), active.placement, "none", 1.0)
    try:
        assert keys(pool.links) == {("leaf-0", f"ipc://{tmp_path}/own")}
        assert pool.links[0].compression == "lz4"
        assert pool.links[0].models == frozenset()   # nothing routes before its pong
        empty = config({})
        added, retired = pool.reconcile(wanted_leaves(own, empty, pool), empty.placement, 0.0)
        assert not added and not retired and not pool.retiring
    finally:
        pool.close()


def test_added_retired_moved_and_taken_back(ctx, tmp_path):
    ep = {n: f"ipc://{tmp_path}/{n}" for n in ("a", "b", "b2")}
    first = config({"leaf-a": (ep["a"], ["ctr@3"])})
    pool = LeafPool(ctx, wanted_leaves((), first), first.placement, "none", 1.0)
    try:
        grown = config({"leaf-a": (ep["a"], ["ctr@3"]), "leaf-b": (ep["b"], ["ctr@5"])})
        added, retired = pool.reconcile(wanted_leaves((), grown, pool), grown.placement, 9.0)
        assert keys(added) == {("leaf-b", ep["b"])} and not retired
        # Added while serving: no routing until its pong lists ready versions.
        assert added[0].models == frozenset() and pool.candidates("ctr@5", 0.0) == []
        assert set(pool.by_socket.values()) == set(pool.links)
        # leaf-b moves: the new endpoint gets a link, the old one retires.
        moved = config({"leaf-a": (ep["a"], ["ctr@3"]), "leaf-b": (ep["b2"], ["ctr@5"])})
        added, retired = pool.reconcile(wanted_leaves((), moved, pool), moved.placement, 9.0)
        assert keys(added) == {("leaf-b", ep["b2"])} and keys(retired) == {("leaf-b", ep["b"])}
        assert retired[0].retiring and retired[0].drain_until == 9.0
        assert retired[0] not in pool.links and retired[0] in pool.retiring
        assert retired[0].socket in pool.by_socket   # its replies are still read
        assert [e.get("retiring") for e in pool.status(0.0)] == [None, None, True]
        # Named again before it closed: back in service, not relinked.
        back = config({"leaf-a": (ep["a"], ["ctr@3"]), "leaf-b": (ep["b"], ["ctr@5"])})
        added, retired = pool.reconcile(wanted_leaves((), back, pool), back.placement, 9.0)
        assert not added and keys(retired) == {("leaf-b", ep["b2"])}
        assert ("leaf-b", ep["b"]) in keys(pool.links) and not pool.links[-1].retiring
        for link in list(pool.retiring):
            pool.forget(link)
        assert not pool.retiring and set(pool.by_socket.values()) == set(pool.links)
    finally:
        pool.close()


def test_placement_without_endpoint_keeps_the_link(ctx, tmp_path):
    first = config({"leaf-a": (f"ipc://{tmp_path}/a", ["ctr@3"])})
    pool = LeafPool(ctx, wanted_leaves((), first), first.placement, "none", 1.0)
    try:
        later = config({"leaf-a": (None, ["ctr@3", "ctr@5"])})
        added, retired = pool.reconcile(wanted_leaves((), later, pool), later.placement, 0.0)
        assert not added and not retired
        assert pool.links[0].configured == {"ctr@3", "ctr@5"}
    finally:
        pool.close()


def test_an_unusable_endpoint_is_skipped_while_serving(ctx, tmp_path):
    first = config({"leaf-a": (f"ipc://{tmp_path}/a", ["ctr@3"])})
    pool = LeafPool(ctx, wanted_leaves((), first), first.placement, "none", 1.0)
    try:
        bad = config({"leaf-a": (f"ipc://{tmp_path}/a", ["ctr@3"]),
                      "leaf-x": ("nonsense://here", ["ctr@5"])})
        added, retired = pool.reconcile(wanted_leaves((), bad, pool), bad.placement, 0.0)
        assert not added and not retired and keys(pool.links) == {("leaf-a", f"ipc://{tmp_path}/a")}
    finally:
        pool.close()
