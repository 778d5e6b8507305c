"""What a leaf publishes about itself, and what a root makes of the records
it finds: endpoints a root on this host can reach, keyed by leaf name."""
from __future__ import annotations

from leafproc.follower import advertised, host_name
from rootproc.leaves.wanted import wanted_leaves
from rootproc.rollout.follower import discovered
from signatures.configstore.members import MemberStatus


def test_a_leaf_publishes_its_binds_a_wildcard_as_its_host_name():
    assert advertised(("tcp://10.0.0.5:5560", "ipc:///run/l.sock")) == (
        "tcp://10.0.0.5:5560", "ipc:///run/l.sock")
    assert advertised(("tcp://0.0.0.0:5560", "tcp://*:5561")) == (
        f"tcp://{host_name()}:5560", f"tcp://{host_name()}:5561")
    assert advertised(("tcp://0.0.0.0:5560",), ("tcp://gpu-a.internal:5560",)) == (
        "tcp://gpu-a.internal:5560",)


def test_roots_take_reachable_endpoints_by_leaf_name():
    records = [
        MemberStatus("leaf", "gpu-a", host="h1", endpoints=("tcp://h1:5560", "ipc:///run/a")),
        MemberStatus("leaf", "gpu-a", host="h2", endpoints=("tcp://h2:5560",), curve_key="K"),
        MemberStatus("leaf", "gpu-b", host="me", endpoints=("ipc:///run/b",)),
        MemberStatus("leaf", "idle", host="h3"),                 # nothing published yet
        MemberStatus("root", "root-0", host="h1", endpoints=("tcp://h1:5550",)),
    ]
    found = discovered(records, host="me")
    assert found == {"gpu-a": (("tcp://h1:5560", "tcp://h2:5560"), None),
                     "gpu-b": (("ipc:///run/b",), None)}


def test_the_root_config_wins_over_membership(tmp_path):
    from rootproc.rollout.installed import ActiveConfig
    from rootproc.settings import LeafSpec
    active = ActiveConfig("b-1", {}, endpoints={"gpu-b": "tcp://bundle:1"})
    configured = [LeafSpec("gpu-a", ("tcp://fixed:1",), compression="lz4")]
    fleet = {"gpu-a": (("tcp://h1:5560",), None), "gpu-b": (("tcp://h2:5560",), "KEY"),
             "gpu-c": (("tcp://h3:5560",), None)}
    leaves = {leaf.name: leaf for leaf in wanted_leaves(configured, active, None, fleet, "/k")}
    assert leaves["gpu-a"] == configured[0]
    assert leaves["gpu-b"].endpoints == ("tcp://bundle:1", "tcp://h2:5560")
    assert leaves["gpu-b"].curve.server_public_key == "KEY"
    assert leaves["gpu-b"].curve.client_secret_key == "/k"
    assert leaves["gpu-c"].endpoints == ("tcp://h3:5560",) and leaves["gpu-c"].curve is None
