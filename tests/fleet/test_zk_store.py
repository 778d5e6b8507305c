"""What only the ZooKeeper config store does, against a real server: its
address, the node size limit, watches, catch-up after a disconnection,
ephemeral members, writers' ACLs, and commands while the ensemble is down.
(What both backends do is tests/signatures/test_store.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
import zlib

import pytest

from _trim.errors import ConfigError, StoreError
from signatures.bundle import Bundle
from signatures.configstore import ConfigStoreUnavailable, Stages, open_config_store
from signatures.configstore.members import MemberStatus
from signatures.configstore.zookeeper.ensemble import NODE_BYTES, Ensemble, parse_address
from signatures.configstore.zookeeper.settings import ZooKeeperSettings
from tests.signatures.test_store import B1, B2, make_bundle
from tests.support.procs import REPO_ROOT
from tests.support.zookeeper import ZooKeeperServer

from .tcp_proxy import TcpProxy

FAST = ZooKeeperSettings(session_timeout_s=2.0, connect_timeout_s=3.0)


def trimmer(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "signatures.cli", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def wait_for(what: str, check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def own_zk(tmp_path):
    """A server this test may stop and kill."""
    with ZooKeeperServer(tmp_path / "zk") as server:
        yield server


def test_the_address_names_hosts_and_a_chroot(tmp_path):
    assert parse_address("zk://a:2181,b:2182/trimmer/prod") == ("a:2181,b:2182", "/trimmer/prod")
    for bad, says in (("zk://a:2181", "name a chroot"), ("zk://a:2181/", "name a chroot"),
                      ("zk://a/x", "'a' is not HOST:PORT"), ("zk://a:99999/x", "not HOST:PORT"),
                      ("zk://a:1/x/../y", "name a chroot")):
        with pytest.raises(ConfigError, match=says):
            open_config_store(bad)
    out = trimmer("status", "--config-store", "zk://127.0.0.1:2181")
    assert out.returncode == 2 and "name a chroot" in out.stderr, out


def test_a_node_past_the_servers_limit_is_refused_by_the_server(zk_server):
    """NODE_BYTES fits a default server's jute.maxbuffer; 1 MiB does not."""
    zk = Ensemble(zk_server.address(), FAST)
    try:
        assert zk.create(zk.path("fits"), b"x" * NODE_BYTES, "write")
        with pytest.raises(ConfigStoreUnavailable):   # the server drops the connection
            zk.create(zk.path("too-big"), b"x" * (1 << 20), "write")
    finally:
        zk.close()


def packed_of_size(n: int) -> tuple[bytes, bytes]:
    """(payload, its zlib stream) with the stream exactly ``n`` bytes long."""
    k = n - 11
    while True:   # stored blocks: 6 bytes of frame, 5 per block of up to 65535
        payload = os.urandom(k)
        packed = zlib.compress(payload, 0)
        if len(packed) == n:
            return payload, packed
        k += n - len(packed)


@pytest.mark.parametrize("size, chunks", [(NODE_BYTES - 1, 0), (NODE_BYTES, 1),
                                          (NODE_BYTES + 1, 2), (2 * NODE_BYTES + 7, 3)])
def test_blobs_at_the_node_limit(zk_server, size, chunks):
    """A blob fills one node up to NODE_BYTES (with its 1-byte tag); one byte
    more and it is chunked, whole or not at all."""
    zk = Ensemble(zk_server.address(), FAST)
    try:
        payload, packed = packed_of_size(size)
        zk.put_packed(zk.path("blob"), packed, "a blob")
        data, _ = zk.get(zk.path("blob"), "read")
        digests = zk.children(zk.path("chunks"), "list") or []
        if not chunks:
            assert len(data) == size + 1 == NODE_BYTES and not digests
        else:
            assert data[:1] == b"C" and json.loads(data[1:])["chunks"] == chunks
            assert zk.children(zk.path("chunks", digests[0]), "list") == [
                f"{i:04d}" for i in range(chunks)]
        assert zk.get_blob(zk.path("blob"), "a blob") == payload
    finally:
        zk.close()


def test_a_blob_past_the_store_limit_is_refused_saying_so(zk_server):
    from signatures.configstore.zookeeper.ensemble import MAX_CHUNKS
    zk = Ensemble(zk_server.address(), FAST)
    try:
        with pytest.raises(StoreError, match=r"holds at most \d+ bytes compressed"):
            zk.put_packed(zk.path("huge"), b"\0" * (MAX_CHUNKS * NODE_BYTES + 1), "bundle b-x")
        assert zk.get(zk.path("huge"), "read") is None
    finally:
        zk.close()


def test_a_bundle_larger_than_a_node_deploys_and_reads_back(zk_server):
    models = {f"m{i}@1": [os.urandom(24).hex() for _ in range(60)] for i in range(600)}
    big = make_bundle(models)
    assert len(big.to_json()) > 2 * NODE_BYTES and len(zlib.compress(big.to_json())) > NODE_BYTES
    address = zk_server.address()
    with open_config_store(address) as store:
        Stages(store).deploy(big, "canary")
    with open_config_store(address) as reader:
        gen, bundle = reader.active("canary")
        assert gen == 1 and bundle.to_dict() == big.to_dict()


def test_commands_fail_naming_the_ensemble_when_it_is_down(own_zk, tmp_path):
    address = own_zk.address("c")
    B1.save(tmp_path / "b1.json")
    assert trimmer("deploy", str(tmp_path / "b1.json"), "--stage", "canary",
                   "--config-store", address).returncode == 0
    own_zk.stop()
    for argv in (("status",), ("deploy", str(tmp_path / "b1.json"), "--stage", "production"),
                 ("rollback", "canary")):
        t0 = time.monotonic()
        out = trimmer(*argv, "--config-store", address)
        assert out.returncode == 1, out
        assert f"ZooKeeper ensemble {own_zk.hosts} (chroot /c)" in out.stderr, out.stderr
        assert "nothing was" in out.stderr and time.monotonic() - t0 < 30


class Prepared(types.SimpleNamespace):
    pass


def follower(address, generation: int = 0, **kw):
    """A root's follower, with what the root installed at start (``generation``)."""
    from rootproc.rollout.follower import ConfigFollower
    counter = types.SimpleNamespace(n=0)
    counter.inc = lambda: setattr(counter, "n", counter.n + 1)
    first = Prepared(active=types.SimpleNamespace(generation=generation, id=""))
    return ConfigFollower(address, "canary", name="root-t", prepared=first,
                          prepare=lambda active, previous: Prepared(active=active),
                          errors=counter, settings=FAST, **kw)


def take(f, timeout: float = 10.0):
    return wait_for("a config installed", f.take_config, timeout)


def test_a_follower_is_told_by_a_watch_not_by_polling(zk_server):
    """Its safety-net look is once in ten minutes: every install within a
    second or so can only have come from the watch."""
    address = zk_server.address()
    writer = open_config_store(address)
    f = follower(address, recheck_s=600).start()
    try:
        lags = []
        for i in range(5):
            time.sleep(0.3)
            t0 = time.monotonic()
            gen = Stages(writer).deploy(make_bundle({f"m{i}@1": ["a"]}), "canary")
            got = take(f)
            lags.append(time.monotonic() - t0)
            assert got.active.generation == gen
        print(f"\ninstalled after {', '.join(f'{s * 1000:.0f} ms' for s in lags)}")
        assert max(lags) < 5.0   # the figure is bench/test_fleet_bench.py's
    finally:
        f.stop()
        writer.close()


@pytest.mark.parametrize("cut_s", [0.5, 4.0], ids=["session-kept", "session-expired"])
def test_a_change_missed_while_disconnected_is_caught_up(zk_server, cut_s):
    """The follower's path to ZooKeeper is cut while a deploy lands; once it
    is back the follower compares generations and installs it. Cut past the
    session timeout, its member node goes meanwhile and comes back."""
    address = zk_server.address()
    proxy = TcpProxy("127.0.0.1", zk_server.port).start()
    writer = open_config_store(address)
    Stages(writer).deploy(B1, "canary")
    f = follower(address.replace(zk_server.hosts, f"127.0.0.1:{proxy.port}"), generation=1)
    f.start()
    try:
        f.post_heartbeat(MemberStatus("root", "root-t", generation=1, bundle=B1.id))
        wait_for("registered", lambda: writer.members("canary"))
        proxy.cut()
        time.sleep(0.2)
        gen = Stages(writer).deploy(B2, "canary")
        time.sleep(cut_s)
        assert f.take_config() is None
        if cut_s > FAST.session_timeout_s:
            wait_for("its node gone with its session", lambda: not writer.members("canary"))
        proxy.restore()
        assert take(f, 15).active.generation == gen
        (member,) = wait_for("registered again", lambda: writer.members("canary"))
        assert member.name == "root-t"
    finally:
        f.stop()
        proxy.close()
        writer.close()


MEMBER = """
import sys, time
sys.path.insert(0, {root!r})
from signatures.configstore.members import MemberStatus
from signatures.configstore import Stages, open_config_store
from signatures.configstore.zookeeper.settings import ZooKeeperSettings
store = open_config_store({address!r}, settings=ZooKeeperSettings(session_timeout_s=2.0))
store.heartbeat("canary", MemberStatus("leaf", "leaf-0", endpoints=("tcp://10.0.0.9:5560",)))
print("registered", flush=True)
if sys.argv[1] == "close":
    sys.stdin.readline()
    store.close()
    print("closed", flush=True)
time.sleep(60)
"""


def test_members_are_ephemeral_and_status_shows_the_fleet(zk_server):
    address = zk_server.address()
    with open_config_store(address) as store:
        Stages(store).deploy(B1, "canary")
        for how in ("kill", "close"):
            proc = subprocess.Popen([sys.executable, "-c", MEMBER.format(root=REPO_ROOT,
                                     address=address), how], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                                    text=True)
            try:
                assert proc.stdout.readline().strip() == "registered"
                (m,) = store.members("canary")
                assert (m.role, m.name, m.pid, m.endpoints) == ("leaf", "leaf-0", proc.pid,
                                                                ("tcp://10.0.0.9:5560",))
                out = trimmer("status", "--config-store", address)
                assert out.returncode == 0, out
                assert f"leaf leaf-0: on (none), generation ?, {m.host} pid {proc.pid}" in \
                    out.stdout and "endpoints: tcp://10.0.0.9:5560" in out.stdout, out.stdout
                if how == "kill":
                    proc.kill()
                    t0 = time.monotonic()
                    wait_for("the node gone", lambda: not store.members("canary"), 10)
                    assert time.monotonic() - t0 < 2.0 + 2.0   # the session timeout, and a tick
                else:
                    proc.stdin.write("close\n")
                    proc.stdin.flush()
                    assert proc.stdout.readline().strip() == "closed"
                    assert not store.members("canary")   # at once
            finally:
                proc.kill()
                proc.wait(10)
                proc.stdout.close()
                proc.stdin.close()


def test_writers_need_the_credential_readers_do_not(zk_server, monkeypatch, tmp_path):
    address = zk_server.address()
    monkeypatch.setenv("TRIMMER_ZK_AUTH", "deployer:s3cret")
    member = open_config_store(address)   # registered while the test runs
    Stages(member).deploy(B1, "canary")
    member.heartbeat("canary", MemberStatus("root", "root-0", generation=1, bundle=B1.id))
    for env in ({"TRIMMER_ZK_AUTH": ""}, {"TRIMMER_ZK_AUTH": "deployer:wrong"},
                {"TRIMMER_ZK_AUTH": "someone:else"}):
        monkeypatch.setenv("TRIMMER_ZK_AUTH", env["TRIMMER_ZK_AUTH"])
        with open_config_store(address) as other:
            assert other.active("canary")[1].id == B1.id   # readers may be open
            assert [m.name for m in other.members("canary")] == ["root-0"]
            with pytest.raises(StoreError, match="not allowed"):
                Stages(other).deploy(B2, "canary")
            with pytest.raises(StoreError, match="not allowed"):
                Stages(other).promote("canary", "production")
            with pytest.raises(StoreError, match="not allowed"):   # nor pose as a leaf
                other.heartbeat("canary", MemberStatus("leaf", "leaf-x", endpoints=("tcp://x:1",)))
        B2.save(tmp_path / "b2.json")
        out = trimmer("deploy", str(tmp_path / "b2.json"), "--stage", "canary",
                      "--config-store", address, env=env)
        assert out.returncode == 1 and "not allowed" in out.stderr, out
    monkeypatch.setenv("TRIMMER_ZK_AUTH", "no-colon")
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        open_config_store(address)
    monkeypatch.setenv("TRIMMER_ZK_AUTH", "deployer:s3cret")
    with open_config_store(address) as writer:
        assert Stages(writer).deploy(B2, "canary") == 2
        assert Bundle.from_dict(writer.bundle(B2.id).to_dict()).id == B2.id
    member.close()
