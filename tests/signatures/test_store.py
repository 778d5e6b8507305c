"""The config store's contract, run against both backends: a directory and
a real ZooKeeper server (tests/support/zookeeper.py; a chroot per test)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _trim.errors import StoreError
from signatures.bundle import Bundle
from signatures.configstore import Stages, open_config_store
from signatures.configstore.members import LinkStatus, MemberStatus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["dir", "zk"])
def address(request, tmp_path):
    """A fresh, empty store's address; ``address.other()`` another one."""
    if request.param == "dir":
        return Address(str(tmp_path / "store"), lambda: str(tmp_path / "other"))
    zk = request.getfixturevalue("zk_server")
    return Address(zk.address(), zk.address)


class Address(str):
    def __new__(cls, value, other):
        self = super().__new__(cls, value)
        self.other = other
        self.zk = value.startswith("zk://")
        return self


@pytest.fixture
def store(address):
    with open_config_store(address) as s:
        yield s


def make_bundle(models: dict, tag: str = "") -> Bundle:
    d = {"format": 1, "id": "b-0", "schema_fingerprint": tag,
         "models": {k: {"model": k.split("@")[0], "version": k.split("@")[1],
                        "signature_hash": "h-" + k.split("@")[0], "features": f}
                    for k, f in models.items()},
         "leaves": {"leaf-0": {"current": list(models), "pending": [],
                               "features": sorted({x for f in models.values() for x in f})}}}
    b = Bundle.from_dict(d)
    b.id = Bundle.content_id(b.content())
    return b


B1 = make_bundle({"ctr@1": ["a", "b"]})
B2 = make_bundle({"ctr@1": ["a", "b"], "ctr@2": ["a", "b"]})
B3 = make_bundle({"ctr@2": ["a", "b"], "emb@1": ["c"]})


def test_empty_store(store):
    s = store
    assert s.active("canary") == (0, None) and s.generation("production") == 0
    assert s.active_models("canary") == [] and s.members("canary") == []
    with pytest.raises(StoreError, match="unknown stage 'staging'"):
        s.active("staging")


def test_deploy_promote_rollback(store, address):
    s = store
    stages = Stages(s)
    assert stages.deploy(B1, "canary") == 1
    gen, b = s.active("canary")
    assert gen == 1 and b.id == B1.id and b.features_for("ctr@1") == ["a", "b"]
    assert stages.deploy(B2, "canary") == 2
    stages.deploy_models("canary", ["ctr@2"])
    assert stages.promote("canary", "production") == 1
    assert s.active("production")[1].id == B2.id
    assert s.active_models("production") == ["ctr@2"]
    # B1 ran with no model versions: ctr@2 leaves (while B2 is live), then B1 returns.
    r = stages.rollback("canary", wait_s=0)
    assert (r.generation, r.bundle, r.models, r.uncovered) == (5, B1.id, [], [])
    assert stages.status()["canary"]["uncovered"] == []
    with pytest.raises(StoreError, match="canary has no previous config to roll back to"):
        stages.rollback("canary", wait_s=0)
    with pytest.raises(StoreError, match="production has no previous config"):
        stages.rollback("production", wait_s=0)
    with pytest.raises(StoreError, match="canary has no active config"):
        Stages(open_config_store(address.other())).promote("canary", "production")
    actions = [e["action"] for e in s.log_entries()]
    assert actions == ["deploy", "deploy", "deploy-models", "promote", "rollback-models",
                       "rollback"]


def test_config_before_models(store):
    s = store
    stages = Stages(s)
    with pytest.raises(StoreError, match=r"config before models: the active root config on "
                                         r"canary \(none\) does not carry ctr@1"):
        stages.deploy_models("canary", ["ctr@1"])
    stages.deploy(B1, "canary")
    with pytest.raises(StoreError, match=r"does not carry ctr@2\. Deploy a bundle with it to "
                                         r"canary first.*--force"):
        stages.deploy_models("canary", ["ctr@1", "ctr@2"])
    assert s.active_models("canary") == []
    with pytest.raises(StoreError, match="different signature for ctr@1"):
        stages.deploy_models("canary", ["ctr@1"], signatures={"ctr@1": "other"})
    assert stages.deploy_models("canary", ["ctr@1"], signatures={"ctr@1": "h-ctr"}) == ["ctr@1"]
    assert stages.deploy_models("canary", ["ctr@2"], force=True) == ["ctr@1", "ctr@2"]
    forced = [e for e in s.log_entries() if e.get("forced")]
    assert len(forced) == 1 and forced[0]["missing"] == ["ctr@2"] and "user" in forced[0]
    assert stages.deploy_models("canary", ["ctr@1"], replace=True) == ["ctr@1"]


def test_deploy_refuses_dropping_staged_models(store):
    s = store
    stages = Stages(s)
    stages.deploy(B2, "canary")
    stages.deploy_models("canary", ["ctr@1"])
    with pytest.raises(StoreError, match=r"does not carry ctr@1, which is on canary: take it "
                                         r"off first"):
        stages.deploy(B3, "canary")
    assert stages.deploy(B3, "canary", force=True) == 3
    assert s.log_entries()[-1]["forced"] is True


def test_heartbeats(store):
    s = store
    s.heartbeat("canary", MemberStatus("root", "root-0", generation=3, bundle=B1.id))
    s.heartbeat("canary", MemberStatus("leaf", "leaf-0", generation=2))
    (m0, m1) = s.members("canary")
    assert (m0.role, m0.name, m0.generation) == ("leaf", "leaf-0", 2)
    assert m1.bundle == B1.id and m1.age_s() >= 0
    with pytest.raises(StoreError, match="plain name"):
        s.heartbeat("canary", MemberStatus("root", "../x"))



def test_status_shows_each_roots_links_and_their_transport(store):
    from signatures.cli.stages import format_status
    s = store
    stages = Stages(s)
    stages.deploy(B1, "canary")
    s.heartbeat("canary", MemberStatus("root", "root-0", generation=1, bundle=B1.id, leaves=(
        LinkStatus("leaf-0", "ipc:///run/l0.sock", healthy=True, transport="shm"),
        LinkStatus("leaf-1", "tcp://10.0.0.2:5551", healthy=False, transport="socket",
                   retiring=True),
        LinkStatus("leaf-0", "ipc:///run/l0b.sock", healthy=True, draining=True))))
    text = format_status(stages.status())
    assert ("leaves: leaf-0 ipc:///run/l0.sock (shm), "
            "leaf-1 tcp://10.0.0.2:5551 (retiring) (DOWN), "
            "leaf-0 ipc:///run/l0b.sock (draining)") in text


CRASHING_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from signatures.bundle import Bundle
    from signatures.configstore import Stages, open_config_store
    def hook():
        open({marker!r}, "w").close()
        time.sleep(60)
    store = open_config_store({store!r}, _before_commit=hook)
    Stages(store).deploy(Bundle.load({bundle!r}), "canary")
""")


def test_writer_killed_mid_write_leaves_previous_config(tmp_path, store, address):
    s = store
    stages = Stages(s)
    stages.deploy(B1, "canary")
    B2.save(tmp_path / "b2.json")
    marker = tmp_path / "in-write"
    script = CRASHING_WRITER.format(root=ROOT, marker=str(marker), store=str(address),
                                    bundle=str(tmp_path / "b2.json"))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited before reaching the write"
            assert time.monotonic() < deadline, "writer never reached the write"
            time.sleep(0.02)
        if not address.zk:   # the new record is in its temp file, not yet renamed
            assert any(".tmp." in n for n in os.listdir(os.path.join(address, "stages")))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gen, bundle = s.active("canary")
    assert (gen, bundle.id) == (1, B1.id)
    assert stages.status()["canary"]["bundle"] == B1.id
    # the dead writer's lock died with it: the next writer proceeds
    assert stages.deploy(B2, "canary") == 2
    assert s.active("canary")[1].id == B2.id and s.history("canary") == [B1.id]


CONCURRENT_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from signatures.bundle import Bundle
    from signatures.configstore import Stages, open_config_store
    stages = Stages(open_config_store({store!r}))
    bundles = [Bundle.load(p) for p in {paths!r}]
    for i in range({n}):
        stages.deploy(bundles[i % len(bundles)], "canary")
        stages.deploy_models("canary", ["ctr@1"])
""")


def test_concurrent_writers_lose_nothing(tmp_path, address):
    paths = []
    for i in range(3):
        b = make_bundle({"ctr@1": ["a"], f"m{i}@1": ["b"]})
        b.save(tmp_path / f"b{i}.json")
        paths.append(str(tmp_path / f"b{i}.json"))
    n, writers = 10, 4
    script = CONCURRENT_WRITER.format(root=ROOT, store=str(address), paths=paths, n=n)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(writers)]
    try:
        for p in procs:
            assert p.wait(120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    s = open_config_store(address)
    # every change is counted once: no update was lost to a race
    assert s.generation("canary") == 2 * n * writers
    log = s.log_entries()
    assert len(log) == 2 * n * writers
    assert sorted(e["generation"] for e in log) == list(range(1, 2 * n * writers + 1))
    gen, bundle = s.active("canary")
    assert bundle.id in {Bundle.load(p).id for p in paths}
    assert s.active_models("canary") == ["ctr@1"]
    if not address.zk:
        assert not [f for f in os.listdir(os.path.join(address, "stages")) if ".tmp." in f]
    s.close()


def test_cli(tmp_path, address):
    B1.save(tmp_path / "b1.json")
    B3.save(tmp_path / "b3.json")
    store = str(address)

    def run(*a):
        return subprocess.run([sys.executable, "-m", "signatures.cli", *a, "--config-store", store],
                              capture_output=True, text=True)
    r = run("deploy-models", "ctr@1", "--stage", "canary")
    assert r.returncode == 1 and "config before models" in r.stderr
    assert run("deploy", str(tmp_path / "b1.json"), "--stage", "canary").returncode == 0
    r = run("deploy-models", "ctr@1", "--stage", "canary")
    assert r.returncode == 0 and "canary: models ctr@1" in r.stdout
    r = run("deploy-models", "emb@1", "--stage", "canary", "--force")
    assert r.returncode == 0 and "WARNING forced deploy-models" in r.stderr
    r = run("promote", "canary", "production")
    assert r.returncode == 0 and f"production: config {B1.id}" in r.stdout
    r = run("deploy", str(tmp_path / "b3.json"), "--stage", "canary")
    assert r.returncode == 1 and "does not carry ctr@1, which is on canary: take it off" in r.stderr
    assert run("deploy", str(tmp_path / "b3.json"), "--stage", "canary", "--force").returncode == 0
    r = run("rollback", "canary")
    assert r.returncode == 0 and f"rolled back to config {B1.id}" in r.stdout
    r = run("status")
    assert r.returncode == 0 and "canary: generation 5" in r.stdout
    assert "NOT IN CONFIG: emb@1" in r.stdout
    st = json.loads(run("status", "--json").stdout)
    assert st["production"]["models"] == ["ctr@1", "emb@1"]


def test_deploy_models_waits_for_every_live_root(store):
    """Config before models, fleet-wide: a root still on a config without the
    version holds deploy-models back (up to --wait), then it is refused
    naming the root; once the root reports a config carrying it, it goes."""
    import threading
    s = store
    stages = Stages(s)
    stages.deploy(B1, "canary")
    stages.deploy(B2, "canary")
    lagging = MemberStatus("root", "root-0", generation=1, bundle=B1.id)
    s.heartbeat("canary", lagging)
    s.heartbeat("canary", MemberStatus("root", "root-1", generation=2, bundle=B2.id))
    s.heartbeat("canary", MemberStatus("leaf", "leaf-0"))   # leaves are not waited for
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"1 live root\(s\) on canary did not install a config "
                                         r"carrying ctr@2 within 0.5 s: root root-0 on .* runs "
                                         rf"config {B1.id} \(generation 1\), which does not "
                                         r"carry ctr@2"):
        stages.deploy_models("canary", ["ctr@2"], wait_s=0.5)
    assert time.monotonic() - t0 >= 0.5 and s.active_models("canary") == []
    # It catches up while deploy-models waits.
    later = threading.Timer(0.3, s.heartbeat, ("canary", MemberStatus(
        "root", "root-0", generation=2, bundle=B2.id)))
    later.start()
    assert stages.deploy_models("canary", ["ctr@2"], wait_s=10) == ["ctr@2"]
    later.join()
    # Forced past a lagging root: logged, naming it.
    s.heartbeat("canary", lagging)
    t0 = time.monotonic()
    assert stages.deploy_models("canary", ["ctr@2"], replace=True, force=True, wait_s=10) == ["ctr@2"]
    assert time.monotonic() - t0 < 5   # forced: not waited for
    entry = s.log_entries()[-1]
    assert entry["forced"] is True and len(entry["lagging"]) == 1
    assert entry["lagging"][0].startswith("root root-0 on ")


def break_record(address, store, stage: str, data: bytes | None) -> None:
    """Replace the stage's record with ``data``, or delete it (None), behind the store's back."""
    if not address.zk:
        path = os.path.join(address, "stages", f"{stage}.json")
        if data is None:
            os.remove(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
        return
    node = store.zk.path("stages", stage)
    zk = store.zk.client()
    if data is None:
        zk.delete(node)
    else:
        zk.set(node, data)


@pytest.mark.parametrize("damage", [b'{"generation": 4, "bundle": ', None], ids=["corrupt", "lost"])
def test_a_broken_stage_record_is_reported_and_replaced_from_the_audit_log(store, address,
                                                                           damage):
    from signatures.configstore.stage_state import StageProblem
    s = store
    stages = Stages(s)
    stages.deploy(B1, "canary")
    stages.deploy(B2, "canary")
    stages.deploy_models("canary", ["ctr@2"])
    s.heartbeat("canary", MemberStatus("root", "root-0", generation=7, bundle=B2.id))
    break_record(address, s, "canary", damage)
    kind = "corrupt" if damage else "missing"
    problem = s.read_stage("canary")
    assert isinstance(problem, StageProblem) and problem.kind == kind, problem
    with pytest.raises(StoreError, match="trimmer rollback canary"):
        s.state("canary")
    st = stages.status()["canary"]
    assert st["problem"] == kind and st["bundle"] == B2.id and st["models"] == ["ctr@2"]
    with pytest.raises(StoreError, match="stage record"):   # it adds to a record it cannot read
        stages.deploy_models("canary", ["ctr@1"], wait_s=0)
    # rollback writes a new record from the audit log, past every generation seen.
    # Its first change (ctr@2 off: B1 ran without it) is past every generation seen.
    r = stages.rollback("canary", wait_s=0)
    assert (r.generation, r.bundle) == (9, B1.id)
    assert s.state("canary")["models"] == [] and s.history("canary") == []
    entry = s.log_entries()[-2]
    assert entry["action"] == "rollback-models" and entry["replaced"] == kind
    assert entry["generation"] == 8


def test_status_says_how_it_knows_a_member_is_alive(store, address):
    """A ZooKeeper member's record is written only when it changes; its
    session says it is alive, not the record's age."""
    from signatures.cli.stages import format_status
    store.heartbeat("canary", MemberStatus("leaf", "leaf-0", generation=1))
    out = format_status(Stages(store).status())
    if address.zk:
        assert "session open, record from" in out and "last seen" not in out, out
    else:
        assert "last seen 0s ago" in out, out
